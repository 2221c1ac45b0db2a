# Vault Agent, exec (process supervisor) mode: the key in the environment
# of a child process that the agent restarts with a new key before the old
# lease ends.
#   vault agent -config=agent.hcl

vault {
  address = "http://127.0.0.1:8200"
}

auto_auth {
  method "token_file" {
    config = {
      token_file_path = "vault-token"
    }
  }
}

template_config {
  exit_on_retry_failure = true
}

env_template "HERON_API_KEY" {
  contents             = "{{ with secret \"heron/creds/app\" }}{{ .Data.api_key }}{{ end }}"
  error_on_missing_key = true
}

exec {
  command                   = ["./heron-app", "-heron-url", "https://app.herondata.io"]
  restart_on_secret_changes = "always"
  restart_stop_signal       = "SIGTERM"
}
