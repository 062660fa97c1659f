package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/formats/repo"
)

func publishCommand() *cli.Command {
	return &cli.Command{
		Name:      "publish",
		Usage:     "add a build's packages to a repository the package managers install from",
		ArgsUsage: "--repo DIR OUTPUT...",
		Description: `Copies the packages listed in each OUTPUT's packages/packages.json (checked against their
recorded sizes and sha256) into the repository DIR and rewrites its metadata: Debian packages
into an apt repository (pool/<component>/..., dists/<suite>/<component>/binary-<arch>/Packages
and Packages.gz, Release; with --gpg-key also InRelease and Release.gpg), RPMs into rpm-md
(rpms/<arch>/..., repodata/ with repomd.xml; with --gpg-key repomd.xml.asc and .key), Arch
packages into archlinux/ with the database pacman reads (NAME.db, NAME.files). What the repository
already holds is kept; publishing the same packages again writes nothing. New metadata is
written beside the old and swapped in at the end: a failure leaves the repository as it was.
The metadata is dated by SOURCE_DATE_EPOCH (default: now).`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "repo", Usage: "the repository's root directory (created if missing)", Required: true},
			&cli.StringFlag{Name: "suite", Value: "kmpack", Usage: "apt: the suite (dists/SUITE; sources.list: deb URL SUITE COMPONENT)"},
			&cli.StringFlag{Name: "component", Value: "main", Usage: "apt: the component"},
			&cli.StringFlag{Name: "arch-db", Value: "kmpack", Usage: "Arch: the database's name (archlinux/NAME.db; pacman.conf's [NAME] section)"},
			&cli.StringFlag{Name: "gpg-key", EnvVars: []string{"KMPACK_GPG_KEY"}, Usage: "sign the metadata with this OpenPGP secret key (gpg --armor --export-secret-keys)"},
			&cli.StringFlag{Name: "gpg-passphrase-file", EnvVars: []string{"KMPACK_GPG_PASSPHRASE_FILE"}, Usage: "read a protected --gpg-key's passphrase from this file's first line (or set KMPACK_GPG_PASSPHRASE)"},
			jsonFlag,
		},
		Action: runPublish,
	}
}

func runPublish(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("publish: name at least one build OUTPUT directory")
	}
	date, err := formats.SourceDateEpoch()
	if err != nil {
		return usagef("%v", err)
	}
	o := repo.Options{Dir: c.String("repo"), Suite: c.String("suite"), Component: c.String("component"), ArchDB: c.String("arch-db"), Date: date}
	signing, err := packageSigning(c)
	if err != nil {
		return err
	}
	if signing != nil {
		o.Key = signing.RPM
	}
	pkgs, err := repo.Collect(c.Args().Slice())
	if err != nil {
		return err
	}
	res, err := repo.Publish(pkgs, o)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		if res.Added == nil {
			res.Added = []string{}
		}
		if res.Skipped == nil {
			res.Skipped = []string{}
		}
		return writeJSON(c.App.Writer, struct {
			Repo     string   `json:"repo"`
			Changed  bool     `json:"changed"`
			Packages int      `json:"packages"`
			Added    []string `json:"added"`
			Skipped  []string `json:"skipped"`
		}{o.Dir, res.Changed, res.Packages, res.Added, res.Skipped})
	}
	for _, s := range res.Skipped {
		fmt.Fprintf(c.App.ErrWriter, "kmpack: %s: not published (no repository writer for this format yet)\n", s)
	}
	for _, a := range res.Added {
		fmt.Fprintf(c.App.Writer, "added %s\n", a)
	}
	if res.Packages > 0 && !res.Changed {
		fmt.Fprintf(c.App.Writer, "%s: unchanged (%d packages)\n", o.Dir, res.Packages)
	} else if res.Changed {
		fmt.Fprintf(c.App.Writer, "%s: %d packages\n", o.Dir, res.Packages)
	}
	return nil
}
