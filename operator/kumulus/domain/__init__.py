"""Pure logic of the execution engine.

Everything the operator decides lives here, free of I/O, so it can be tested without a
cluster: the Execution lifecycle (:mod:`.lifecycle`), the Pod spec (:mod:`.podspec`),
deterministic names (:mod:`.naming`), Pod outcome mapping (:mod:`.outcome`), retry backoff
(:mod:`.backoff`), flow code checks (:mod:`.flowcode`), the one measure and limit of output
size (:mod:`.outputs`, also used by the runner) and the operator settings (:mod:`.settings`).
"""
