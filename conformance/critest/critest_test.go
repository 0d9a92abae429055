// Package critest builds upstream critest (kubernetes-sigs/cri-tools) from its
// conformance specs, used as a library at the version pinned in go.mod:
// pkg/validate registers the specs, pkg/framework their flags and helpers.
// hack/build-critest.sh compiles this package with `go test -c`; the binary
// takes cri-tools' own flags (--runtime-endpoint, --runtime-handler,
// --test-images-file, ...) and Ginkgo's (--ginkgo.skip, --ginkgo.junit-report).
// The benchmark specs (pkg/benchmark) are left out: they measure, never fail.
package critest

import (
	"flag"
	"os"
	"testing"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"

	"sigs.k8s.io/cri-tools/pkg/framework"
	_ "sigs.k8s.io/cri-tools/pkg/validate"
)

// TestMain adds the framework's flags before `go test` parses the command line.
func TestMain(m *testing.M) {
	framework.RegisterFlags()
	flag.Parse()
	os.Exit(m.Run())
}

// TestCRIValidation runs every registered spec that the Ginkgo flags select.
func TestCRIValidation(t *testing.T) {
	gomega.RegisterFailHandler(ginkgo.Fail)
	// gate.py's SUITE: --ginkgo.skip matches this, a space and a spec's name.
	ginkgo.RunSpecs(t, "CRI validation (cri-tools pkg/validate)")
}
