package intern_test

import (
	"fmt"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/intern"
)

func TestTableSharesEqualStrings(t *testing.T) {
	tab := intern.Table{}
	a := tab.String([]byte("customer-07"))
	b := tab.String([]byte("customer-07"))
	require.Equal(t, "customer-07", b)
	require.True(t, unsafe.StringData(a) == unsafe.StringData(b), "equal bytes give the same string")
	require.Equal(t, "", tab.String(nil))
}

func TestTableIsBounded(t *testing.T) {
	tab := intern.Table{}
	for i := range intern.Max + 10 {
		require.Equal(t, fmt.Sprint(i), tab.String([]byte(fmt.Sprint(i))))
	}
	require.Len(t, tab, intern.Max)
}
