"""The runner: the entrypoint of every FLOW or SCRIPT execution Pod.

It exists to run one attempt of one Execution (see ``runner-image/README.md`` for the contract with
the operator) and to give the flow the Cloudomation-compatible ``flow_api``. It depends only on the
base install (lightkube, PyYAML): never on pydantic, kopf or the operator's packages.
"""
