//go:build tools

// The helm command is built from this module so that one go.sum pins helm and the Kubernetes API types
// the validator decodes against (helm v3.19.0 depends on k8s.io/api v0.34.0, the same the validator uses).
package main

import _ "helm.sh/helm/v3/cmd/helm"
