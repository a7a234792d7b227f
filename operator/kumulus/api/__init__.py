"""The Kumulus API: pydantic models that are the one source of the CRD schemas.

Every other layer (domain logic, the Kubernetes adapters, the kopf handlers, the webhook
service) reads and writes Kumulus objects through these models, and ``kumulus.api.crdgen``
turns the very same models into the CustomResourceDefinitions and the field reference, so
the schema the apiserver enforces and the one the code sees can never drift apart.
"""
