// Package intern shares equal strings made from bytes: a batch of rows
// that repeats a value (a topic, a partition key, a metadata key) then
// holds one copy of it, and decoding the batch allocates it once.
package intern
