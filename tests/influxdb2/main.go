// Command influxd is InfluxDB OSS 2.7 (github.com/influxdata/influxdb/v2),
// built from its Go module for otel-luna's test suite by
// scripts/build-influxdb2. It is the upstream cmd/influxd main reduced to
// the server itself (no upgrade/downgrade/inspect/recovery subcommands) and
// without the UI assets.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/influxdata/influxdb/v2"
	"github.com/influxdata/influxdb/v2/cmd/influxd/launcher"
	_ "github.com/influxdata/influxdb/v2/tsdb/engine/tsm1"
	_ "github.com/influxdata/influxdb/v2/tsdb/index/tsi1"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"
)

// Set with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "none"
	date    = ""
)

func main() {
	if date == "" {
		date = time.Now().UTC().Format(time.RFC3339)
	}
	influxdb.SetBuildInfo(version, commit, date)

	// Upstream stops gracefully on SIGINT only (kit/signals handles
	// os.Interrupt and os.Kill): make SIGTERM, what test harnesses send,
	// a SIGINT too instead of an abrupt exit.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		for range term {
			_ = syscall.Kill(os.Getpid(), syscall.SIGINT)
		}
	}()

	rootCmd, err := launcher.NewInfluxdCommand(context.Background(), viper.New())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	rootCmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the influxd server version",
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Printf("InfluxDB %s (git: %s) build_date: %s\n", version, commit, date)
		},
	})
	rootCmd.SilenceUsage = true
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "See '%s -h' for help\n", rootCmd.CommandPath())
		os.Exit(1)
	}
}
