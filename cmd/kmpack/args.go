package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// intersperse lets options follow operands (`kmpack build SRC -k TREE`), as GNU tools do:
// urfave/cli v2 stops at the first operand, so each option after an operand is moved, with its
// value when it takes one, to the end of the options of the deepest command on the path that
// defines it (a subcommand's, else its parent's, else the global ones); unknown options go to the
// command being run, where cli reports them. "--" ends options as usual.
func intersperse(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	type level struct {
		words []string // the command name and the options given before the next name
		flags []cli.Flag
	}
	var levels []*level
	// owner is the deepest command on the path that defines option a (else cur).
	owner := func(cur *level, a string) *level {
		for j := len(levels) - 1; j >= 0; j-- {
			if lookupFlag(levels[j].flags, a) != nil {
				return levels[j]
			}
		}
		return cur
	}
	levels = []*level{{words: []string{args[0]}, flags: app.Flags}}
	cmds := app.Commands
	rest := args[1:]
	for len(rest) > 0 {
		a, cur := rest[0], levels[len(levels)-1]
		if !strings.HasPrefix(a, "-") || a == "-" {
			var found *cli.Command
			for _, c := range cmds {
				if c.HasName(a) {
					found = c
				}
			}
			if found == nil {
				break
			}
			levels = append(levels, &level{words: []string{a}, flags: found.Flags})
			cmds = found.Subcommands
			rest = rest[1:]
			continue
		}
		if a == "--" {
			break
		}
		at := owner(cur, a)
		at.words = append(at.words, a)
		rest = rest[1:]
		if takesValue(at.flags, a) && !strings.Contains(a, "=") && len(rest) > 0 {
			at.words = append(at.words, rest[0])
			rest = rest[1:]
		}
	}
	var operands []string
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			operands = append(operands, rest[i:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			operands = append(operands, a)
			continue
		}
		at := owner(levels[len(levels)-1], a)
		at.words = append(at.words, a)
		if takesValue(at.flags, a) && !strings.Contains(a, "=") && i+1 < len(rest) {
			at.words = append(at.words, rest[i+1])
			i++
		}
	}
	var out []string
	for _, l := range levels {
		out = append(out, l.words...)
	}
	return append(out, operands...)
}

func flagName(a string) string {
	a = strings.TrimLeft(a, "-")
	name, _, _ := strings.Cut(a, "=")
	return name
}

func lookupFlag(flags []cli.Flag, a string) cli.Flag {
	name := flagName(a)
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

func takesValue(flags []cli.Flag, a string) bool {
	f := lookupFlag(flags, a)
	if f == nil {
		return false
	}
	dv, ok := f.(cli.DocGenerationFlag)
	return ok && dv.TakesValue()
}
