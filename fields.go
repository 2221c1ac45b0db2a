package heron

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
)

// Field helpers shared by the paths: apply what a write sent, or the schema
// default on create.

// The field helpers apply a value when it was given, or the schema default on
// create, so that an update only changes what the caller sent.
func stringField(d *framework.FieldData, name string, create bool, dst *string) {
	if v, ok := d.GetOk(name); ok {
		*dst = v.(string)
	} else if create {
		*dst = d.GetDefaultOrZero(name).(string)
	}
}

func intField(d *framework.FieldData, name string, create bool, dst *int) {
	if v, ok := d.GetOk(name); ok {
		*dst = v.(int)
	} else if create {
		*dst = d.GetDefaultOrZero(name).(int)
	}
}

func boolField(d *framework.FieldData, name string, create bool, dst *bool) {
	if v, ok := d.GetOk(name); ok {
		*dst = v.(bool)
	} else if create {
		*dst = d.GetDefaultOrZero(name).(bool)
	}
}

func durationField(d *framework.FieldData, name string, create bool, dst *time.Duration) {
	if v, ok := d.GetOk(name); ok {
		*dst = time.Duration(v.(int)) * time.Second
	} else if create {
		*dst = time.Duration(d.GetDefaultOrZero(name).(int)) * time.Second
	}
}

// baseURLError checks what a write sets base_url to, beyond
// heronapi.ValidateBaseURL's format: plain http only for a loopback host (the
// emulator on 127.0.0.0/8, ::1 or localhost); a real Heron is https, and the
// admin key must never cross a network in the clear. A non-empty string is
// the 400 to answer; an unparsable URL is left to ValidateBaseURL.
func baseURLError(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || !strings.EqualFold(u.Scheme, "http") {
		return ""
	}
	if isLoopbackHost(u.Hostname()) {
		return ""
	}
	return fmt.Sprintf("base_url must use https: plain http is only for a loopback host (127.0.0.0/8, ::1, localhost: the emulator), got host %q", u.Hostname())
}

// isLoopbackHost reports whether host (no port) is localhost or a loopback
// address.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// urlOrigin is the scheme and host (with the scheme's default port made
// explicit) of a base_url: what the admin key is sent to. "" when raw does
// not parse.
func urlOrigin(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	if port == "" {
		switch scheme {
		case "https":
			port = "443"
		case "http":
			port = "80"
		}
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}
