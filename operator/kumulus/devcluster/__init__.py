"""The embedded dev cluster: a real control plane and a process-based node agent.

It exists because this project's machines have no container engine; tests and the demo
still talk to a real kube-apiserver. Development tooling only: product code never imports it.
"""
