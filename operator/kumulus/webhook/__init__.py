"""The webhook HTTP service (``kumulus-webhook``): HTTP calls in, Executions out.

Third parties (GitHub, monitoring, forms) call a ``Webhook`` resource's URL; the service
checks the call against the Webhook (method, size, credentials, rate), creates an Execution
of its Flow with the request as inputs, and answers at once (async) or with the Execution's
result (sync). It reads only through a watch cache (:mod:`.cache`); the decisions are the
pure functions of :mod:`kumulus.domain.webhook`. It never imports the operator or kopf.
"""
