package app

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeCommandsUseRealFlags reads every `bin/sparselora ...` command of
// README.md (continuation lines joined) and checks that the command exists and
// that each --flag it shows is one the command's --help lists, so the README
// cannot drift from the CLI. The commands that need no model or data also run.
func TestReadmeCommandsUseRealFlags(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var commands []string
	lines := strings.Split(string(raw), "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		at := strings.Index(line, "bin/sparselora ")
		if at < 0 || strings.Contains(line[:at], "`") {
			continue
		}
		cmd := line[at+len("bin/sparselora "):]
		for strings.HasSuffix(cmd, `\`) && i+1 < len(lines) {
			i++
			cmd = strings.TrimSuffix(cmd, `\`) + " " + strings.TrimSpace(lines[i])
		}
		// Synopsis lines continue without a backslash, indented.
		for i+1 < len(lines) && strings.HasPrefix(lines[i+1], "    [") {
			i++
			cmd += " " + strings.TrimSpace(lines[i])
		}
		commands = append(commands, cmd)
	}
	if len(commands) < 15 {
		t.Fatalf("found %d sparselora commands in README.md, expected the reference's", len(commands))
	}
	flagPattern := regexp.MustCompile(`--([a-z][a-z0-9-]*)`)
	subcommands := map[string]bool{"bench": true, "data": true, "export": true}
	for _, cmd := range commands {
		words := strings.Fields(cmd)
		name := words[0]
		args := []string{name}
		if subcommands[name] && len(words) > 1 {
			args = append(args, words[1])
		}
		code, help, stderr := run(t, append(args, "--help")...)
		if code != 0 {
			t.Errorf("README command %q: `%s --help` exits %d: %s", cmd, strings.Join(args, " "), code, stderr)
			continue
		}
		for _, m := range flagPattern.FindAllStringSubmatch(cmd, -1) {
			if m[1] == "help" {
				continue
			}
			if !strings.Contains(help, "  -"+m[1]+" ") && !strings.Contains(help, "  -"+m[1]+"\n") {
				t.Errorf("README command %q uses --%s, which `%s --help` does not list", cmd, m[1], strings.Join(args, " "))
			}
		}
	}
}
