"""The dev cluster's node agent: a kubelet stand-in that runs Pod containers as local processes.

It exists because the dev machines have no container engine, yet the operator must be tested
against a real kube-apiserver with Pods that really run, log, fail and get deleted. The agent
uses a node client certificate, so the Node authorizer and NodeRestriction apply to it exactly as
to a kubelet. Run it as ``python -m kumulus.devcluster.nodeagent`` (the launcher does).
"""
