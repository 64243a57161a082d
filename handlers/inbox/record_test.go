package inbox

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"gorm.io/gorm"
)

// errRollback rolls back a recording transaction of TestRecordConcurrent.
var errRollback = errors.New("roll back")

// Transactions record overlapping batches of UUIDs at once, some of them
// rolling back: every UUID is new to exactly one transaction that
// committed, the one whose row is in the table. On MySQL a transaction
// may die in a deadlock (when one that inserted a row others wait for
// rolls back, their locks move to the gap before the next row, and then
// each waits for the other's to insert into it); it is run again, as the
// Consumer runs a failed batch again.
func TestRecordConcurrent(t *testing.T) {
	t.Parallel()
	for _, d := range testdb.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db := testdb.Open(t, d)
			in, err := New(db, Config{})
			require.NoError(t, err)
			require.NoError(t, in.Migrate(context.Background()))
			const (
				rounds  = 15
				workers = 6
				pool    = 24 // UUIDs per round
				batch   = 10 // UUIDs per transaction
			)
			for r := range rounds {
				var (
					start sync.WaitGroup
					wg    sync.WaitGroup
					mu    sync.Mutex
					fresh = map[string]int{} // committed transactions that got it back
					errs  []error
				)
				start.Add(workers)
				for w := range workers {
					wg.Go(func() {
						var uuids []string
						for _, i := range rand.Perm(pool)[:batch] {
							uuids = append(uuids, fmt.Sprintf("r%d-u%02d", r, i))
						}
						slices.Sort(uuids)
						rollback := w%3 == 0
						start.Done()
						start.Wait()
						var (
							got []string
							err error
						)
						for range 50 {
							err = db.Transaction(func(tx *gorm.DB) error {
								var err error
								got, err = in.drv.record(tx, &in.sql, "c", uuids, in.drv.timeArg(time.Now()))
								if err != nil {
									return err
								}
								time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
								if rollback {
									return errRollback
								}
								return nil
							})
							if !deadlock(err) {
								break
							}
						}
						mu.Lock()
						defer mu.Unlock()
						switch {
						case errors.Is(err, errRollback):
						case err != nil:
							errs = append(errs, err)
						default:
							for _, u := range got {
								if !slices.Contains(uuids, u) {
									errs = append(errs, fmt.Errorf("%s is not in the batch %v", u, uuids))
								}
								fresh[u]++
							}
						}
					})
				}
				wg.Wait()
				require.Empty(t, errs, "round %d", r)
				for i := range pool {
					u := fmt.Sprintf("r%d-u%02d", r, i)
					rows := testdb.Count(t, db, in.table.Name, "consumer = 'c' AND message_uuid = ?", u)
					require.EqualValues(t, rows, fresh[u], "round %d, %s: committed transactions that took it as new", r, u)
				}
			}
		})
	}
}

// deadlock tells MySQL's error of a transaction it rolled back in a
// deadlock.
func deadlock(err error) bool {
	var e *mysql.MySQLError
	return errors.As(err, &e) && e.Number == 1213
}
