package cli

import (
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// modulePath is the module the command is built from.
const modulePath = "github.com/txoutbox/txoutbox"

// buildVersion is what the binary knows about its build.
type buildVersion struct {
	// Version is the module version ("v1.2.3", a pseudo-version, or
	// "(devel)" for a build from a checkout).
	Version string `json:"version"`
	// Revision is the VCS commit, empty when not stamped (go run, or a
	// build outside a checkout).
	Revision string `json:"revision,omitempty"`
	// Modified is set when the checkout had uncommitted changes.
	Modified bool `json:"modified,omitempty"`
	// Go is the toolchain that built the binary.
	Go string `json:"go"`
}

// readBuildVersion reads the running binary's build information.
func readBuildVersion() buildVersion {
	bi, _ := debug.ReadBuildInfo()
	return versionOf(bi)
}

// versionOf extracts the version from build information, nil when the
// binary has none.
func versionOf(bi *debug.BuildInfo) buildVersion {
	v := buildVersion{Version: "(devel)", Go: "unknown"}
	if bi == nil {
		return v
	}
	v.Go = bi.GoVersion
	mod := bi.Main
	if mod.Path != modulePath {
		// Built as a dependency of another main module.
		for _, d := range bi.Deps {
			if d.Path == modulePath {
				mod = *d
				if d.Replace != nil && d.Replace.Version != "" {
					mod = *d.Replace
				}
				break
			}
		}
	}
	if mod.Version != "" {
		v.Version = mod.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

// String is the one line --version prints, such as
// "txoutbox v1.2.3 (revision 0123abcd, modified) go1.24.1".
func (v buildVersion) String() string {
	var b strings.Builder
	b.WriteString("txoutbox " + v.Version)
	if v.Revision != "" {
		b.WriteString(" (revision " + v.Revision)
		if v.Modified {
			b.WriteString(", modified")
		}
		b.WriteString(")")
	}
	b.WriteString(" " + v.Go)
	return b.String()
}

func versionCmd(o *options, run runWrapper) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, VCS revision and Go version of this binary",
		Long: `Print the module version this binary was built from ("(devel)" for a build from
a checkout), the VCS revision and whether the checkout was modified (when the
build recorded them), and the Go version. "txoutbox --version" prints the same
line. Needs no database.`,
		Example: `  txoutbox version
  txoutbox version --json`,
		Args: cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			v := readBuildVersion()
			return o.print(cmd, v, func(p *printer) { p.linef("%s", v) })
		}),
	}
}
