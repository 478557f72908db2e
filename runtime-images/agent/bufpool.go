package main

import (
	"math/bits"
	"sync"
)

// Request and response bodies are read into buffers that are used again. A bridge's 527 KB event
// (1,000 stream records) in a new buffer each call cost the agent the buffer's zeroing and a garbage
// collection every few calls, about a fifth of its CPU per call (BenchmarkInvoke/agent/records=1000).
//
// Buffers come in powers of two from 4 KB (bodyClassMin) to 8 MB; a larger body gets a buffer of its own. A
// sync.Pool lets the collector free what stays unused (two collections later), so an idle agent keeps none.
const (
	bodyClassMin = 12 // 4 KB
	bodyClassMax = 23 // 8 MB
)

var bodyPools [bodyClassMax + 1]sync.Pool

// bodyClass is the smallest class holding n bytes, or -1 when n is larger than the largest class.
func bodyClass(n int) int {
	if n <= 1<<bodyClassMin {
		return bodyClassMin
	}
	c := bits.Len(uint(n - 1))
	if c > bodyClassMax {
		return -1
	}
	return c
}

// getBody returns an empty buffer with room for at least n bytes.
func getBody(n int) []byte {
	c := bodyClass(n)
	if c < 0 {
		return make([]byte, 0, n)
	}
	if b, ok := bodyPools[c].Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return make([]byte, 0, 1<<c)
}

// putBody gives b back once nothing reads it any more. Buffers that are not of a class (a grown or a
// literal one) are left to the collector.
func putBody(b []byte) {
	c := bodyClass(cap(b))
	if c < 0 || cap(b) != 1<<c {
		return
	}
	b = b[:0]
	bodyPools[c].Put(&b)
}
