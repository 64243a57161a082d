package gormstore

import (
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/internal/metajson"
)

// appendMetadata appends md in the metadata column's form, a JSON object
// of strings with sorted keys (see package metajson).
func appendMetadata(b []byte, md message.Metadata) []byte { return metajson.Append(b, md) }
