package main

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	mrand "math/rand/v2"
	"sort"
	"strings"
)

// errorJSON is Lambda's error body: {"errorMessage": ..., "errorType": ...}.
func errorJSON(errType, msg string) []byte {
	b, _ := json.Marshal(struct {
		ErrorMessage string `json:"errorMessage"`
		ErrorType    string `json:"errorType"`
	}{msg, errType})
	return b
}

func randomHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// fastHex returns n (at most 32) random hex digits from a non-cryptographic source.
func fastHex(n int) string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], mrand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], mrand.Uint64())
	var s [32]byte
	hex.Encode(s[:], b[:])
	return string(s[:n])
}

// newRequestID returns a random (version 4) UUID, the form Lambda request ids take.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

func cut(s string, sep byte) (string, string, bool) {
	return strings.Cut(s, string(sep))
}

func hasPrefix(s, prefix string) bool { return strings.HasPrefix(s, prefix) }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
