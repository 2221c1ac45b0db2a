// Command vault-plugin-secrets-heron serves the Heron secrets engine to Vault.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/plugin"

	heron "github.com/heron-vault/vault-plugin-secrets-heron"
)

func main() {
	// `-version` prints the version and exits, as HashiCorp's plugins do. It is
	// handled before the flag set below, which does not know it; Vault itself
	// learns the version over gRPC (RunningVersion).
	if versionRequested(os.Args[1:]) {
		fmt.Println(heron.Version)
		return
	}

	apiClientMeta := &api.PluginAPIClientMeta{}
	flags := apiClientMeta.FlagSet()
	if err := flags.Parse(os.Args[1:]); err != nil {
		fatal(err)
	}

	tlsConfig := apiClientMeta.GetTLSConfig()
	tlsProviderFunc := api.VaultPluginTLSProvider(tlsConfig)

	if err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: heron.Factory,
		// Vault >= 1.12 ignores TLSProviderFunc (AutoMTLS); kept for older servers.
		TLSProviderFunc: tlsProviderFunc,
	}); err != nil {
		fatal(err)
	}
}

// versionRequested reports whether args ask for the version: a single -version
// or --version (Vault starts the plugin with no arguments, or its TLS flags).
func versionRequested(args []string) bool {
	return len(args) == 1 && (args[0] == "-version" || args[0] == "--version")
}

func fatal(err error) {
	hclog.New(&hclog.LoggerOptions{}).Error("plugin shutting down", "error", err)
	os.Exit(1)
}
