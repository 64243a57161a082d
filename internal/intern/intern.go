package intern

// Max bounds a Table, whatever it is fed.
const Max = 1024

// Table maps strings to their shared copies. Make one per batch (a nil
// Table cannot hold strings); it is not safe for concurrent use.
type Table map[string]string

// String returns b as a string: the same string for equal bytes, as long
// as the table holds it (up to Max strings).
func (t Table) String(b []byte) string {
	if s, ok := t[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(t) < Max {
		t[s] = s
	}
	return s
}
