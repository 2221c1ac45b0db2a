# Vault Agent, template mode: the key in a file, the application told to
# re-read it (SIGHUP) each time the agent renders a new one.
#   vault agent -config=agent.hcl
# Paths are relative to the directory the agent runs in.

vault {
  address = "http://127.0.0.1:8200"
}

auto_auth {
  # token_file is for trying this out; in production use an auth method
  # (approle, kubernetes, aws, ...).
  method "token_file" {
    config = {
      token_file_path = "vault-token"
    }
  }
}

template_config {
  exit_on_retry_failure = true
}

template {
  contents    = "{{ with secret \"heron/creds/app\" }}{{ .Data.api_key }}{{ end }}"
  destination = "heron-api-key"
  perms       = "0600"
  # Run after each render: the application re-reads the file on SIGHUP.
  exec {
    command = ["sh", "-c", "test -f heron-app.pid && kill -HUP $(cat heron-app.pid) || true"]
    timeout = "10s"
  }
}
