package heronapi

import (
	"strings"
	"testing"
)

// ValidKeyID is keyIDPattern checked by hand: the two agree on every id.
func TestValidKeyID_AgreesWithItsPattern(t *testing.T) {
	ids := []string{"", ".", "..", ".a", "a.", "a", "3b0c1e8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "a/b", "a b", "a\x00", "é",
		"_~:@+=-", "-x", "x..y", strings.Repeat("a", 128), strings.Repeat("a", 129), "a\n", "A-Z_09", "a%2F", "a?b", "a#b"}
	for c := 0; c < 256; c++ {
		ids = append(ids, string([]byte{byte(c)}), "a"+string([]byte{byte(c)}))
	}
	for _, id := range ids {
		if got, want := ValidKeyID(id), keyIDPattern.MatchString(id); got != want {
			t.Errorf("ValidKeyID(%q) = %v, the pattern says %v", id, got, want)
		}
	}
}

func FuzzValidKeyID(f *testing.F) {
	f.Add("3b0c1e8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
	f.Add(".x")
	f.Fuzz(func(t *testing.T, id string) {
		if got, want := ValidKeyID(id), keyIDPattern.MatchString(id); got != want {
			t.Errorf("ValidKeyID(%q) = %v, the pattern says %v", id, got, want)
		}
	})
}
