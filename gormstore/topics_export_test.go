package gormstore

// PickSQL exposes a claim's pick statement to the tests, which check its
// query plan. Its parameters are the lock space, the excluded keys and,
// with topics, the topics.
func (s *Store) PickSQL(limit int, topics bool) string {
	return s.drv.(*postgresDriver).pickSQL(limit, topics, false)
}
