package inbox

import (
	"slices"

	"github.com/txoutbox/txoutbox/internal/testdb"
)

// TestDialects are the databases the inbox's tests run on: testdb.Dialects
// and MySQL (MariaDB on the test machines), which the inbox supports ahead
// of the project's other packages.
var TestDialects = withMySQL(testdb.Dialects)

func withMySQL(ds []testdb.Dialect) []testdb.Dialect {
	if slices.Contains(ds, testdb.MySQL) {
		return ds
	}
	return append(slices.Clone(ds), testdb.MySQL)
}
