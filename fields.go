package heron

import (
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
