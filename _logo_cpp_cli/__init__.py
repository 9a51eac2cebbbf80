"""The `logo-cpp` console command's entry point ([project.scripts] in pyproject.toml), kept outside the logo_cpp
package on purpose.

Importing logo_cpp loads its native runtime (ggml, libllama) and numpy: about a second, more on a cold disk. The
console script pip writes runs `from <module> import main` before calling anything, so with logo_cpp.cli as the
entry point a Ctrl-C during that import ended in Python's KeyboardInterrupt traceback. Here the import happens
inside main(), and a Ctrl-C during it is the one line (and exit status 130) that logo_cpp.cli.main gives for a
Ctrl-C once it runs. Importing this module imports nothing else, so the window before main() is Python's own
startup. Nothing here is API: `python -m logo_cpp.cli` and logo_cpp.cli.main stay the ways to call the CLI.
"""

import sys

INTERRUPTED = "logo-cpp: interrupted"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program ended by Ctrl-C


def main() -> int:
    try:
        from logo_cpp.cli import main as cli_main
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    return cli_main()
