"""The embedded dev cluster: a real control plane and a real node (kubelet + containerd).

It exists because this project's machines have no container engine to run kind or k3d;
tests and the demo still talk to a real kube-apiserver and run every Pod as a container of
the images ``make images`` builds. Development tooling only: product code never imports it.
"""
