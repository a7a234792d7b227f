//go:build tools

// Package tools pins CoreDNS, the dev cluster's DNS (Services and Pods by name).
package tools

import (
	_ "github.com/coredns/coredns"
)
