"""The command-line edge of every command: a strict layer over python-fire.

fire calls the function first and complains about leftover arguments afterwards (a typo'd flag
after hours of work), and it turns a folder named ``64`` into an int. So before fire sees anything,
every argument is checked against the function's signature: names (an unknown flag is one line
naming the closest valid one, exit 2, nothing touched), presence of required arguments, and the
type of every value (a message naming the flag). Values are then handed to fire as Python
literals, so a path stays a str whatever it looks like.

Each option's help comes from the function: its type from the annotation (or the default), its
meaning from a ``name: meaning`` line in the docstring. ``--help``/``-h`` lists them all.
The project's user-facing errors (``pipeline.errors.UserError``) and the OSErrors a user can fix
print ``error: ...`` and exit 1; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
import errno
import inspect
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

USAGE_EXIT = 2  # bad command line: nothing was done
ERROR_EXIT = 1  # a user-facing error while working
INTERRUPT_EXIT = 130
OTHER_RANK_DELAY_S = 3.0  # see _print_error
TYPES = {"str": str, "int": int, "float": float, "bool": bool}
# OSErrors whose message (with the file name) tells the user what to fix.
USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
               errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, errno.EFBIG}


class CommandLineError(Exception):
    """A command line that does not fit the command; printed with USAGE_EXIT."""


@dataclass(frozen=True)
class Option:
    name: str
    kind: type                 # str | int | float | bool | list (of int)
    default: object = None
    required: bool = False     # a positional argument (no default)
    optional: bool = False     # None is a valid value ("--x=None")
    meaning: str = ""
    group: str = ""            # a heading in --help (the trainer's config groups)
    choices: tuple = ()        # values an enum accepts, listed in --help

    @property
    def flag(self) -> str:
        return self.name.upper() if self.required else f"--{self.name}"

    def type_name(self) -> str:
        name = self.kind.__name__ if not self.choices else "|".join(map(str, self.choices))
        if self.kind is list:
            name = "list of int (comma-separated)"
        return name + (" or None" if self.optional else "")


def _annotation_type(annotation, default) -> tuple[type, bool]:
    """(kind, optional) from an annotation (a string under ``from __future__ import annotations``)
    or, without one, from the default's type."""
    if annotation is inspect.Parameter.empty:
        if default is None or type(default) not in TYPES.values():
            raise TypeError(f"annotate this parameter: its default {default!r} does not give a type")
        return type(default), False
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [p.strip() for p in text.replace("Optional[", "").rstrip("]").split("|")]
    optional = "None" in parts or text.startswith("Optional[")
    parts = [p for p in parts if p != "None"]
    if len(parts) != 1 or parts[0] not in TYPES:
        raise TypeError(f"unsupported annotation {text!r}: use str, int, float or bool (| None)")
    return TYPES[parts[0]], optional


def doc_meanings(fn) -> dict[str, str]:
    """``name: meaning`` lines of a docstring (continuation lines indented deeper are joined)."""
    meanings, current, indent = {}, None, 0
    for line in (inspect.getdoc(fn) or "").splitlines():
        m = re.match(r"^(\s*)(\w+): (.+)$", line)
        if m:
            current, indent = m.group(2), len(m.group(1))
            meanings[current] = m.group(3).strip()
        elif current and line.strip() and len(line) - len(line.lstrip()) > indent:
            meanings[current] += " " + line.strip()
        else:
            current = None
    return meanings


def options_of(fn) -> list[Option]:
    """The options of ``fn``'s signature (``*args``/``**kwargs`` excluded), in order."""
    meanings = doc_meanings(fn)
    found = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is inspect.Parameter.empty
        kind, optional = _annotation_type(p.annotation, None if required else p.default)
        found.append(Option(p.name, kind, None if required else p.default, required,
                            optional or (not required and p.default is None), meanings.get(p.name, "")))
    return found


def parse_value(opt: Option, text: str):
    """One value from the command line, by the option's type; CommandLineError names the flag."""
    if opt.optional and text in ("None", "none"):
        return None
    try:
        if opt.kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if opt.kind is int:
            if not re.fullmatch(r"[+-]?\d[\d_]*", text.strip()):
                raise ValueError
            return int(text)
        if opt.kind is float:
            return float(text)
        if opt.kind is list:  # of integers: 29,59 or [29, 59]
            items = [v.strip() for v in text.strip().strip("[]").split(",") if v.strip()]
            if not all(re.fullmatch(r"[+-]?\d+", v) for v in items):
                raise ValueError
            return [int(v) for v in items]
    except ValueError:
        raise CommandLineError(f"{opt.flag} expects {'a' if opt.kind is not int else 'an'} "
                               f"{opt.type_name()}, got {text!r}") from None
    if opt.choices and text not in opt.choices:
        raise CommandLineError(f"{opt.flag} must be one of {'|'.join(opt.choices)}, got {text!r}")
    return text


def _suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
    if close:
        return f"did you mean --{close[0]}?"
    return "valid options: " + ", ".join(f"--{n}" for n in names)


def parse_args(options: list[Option], argv: list[str]) -> dict:
    """argv -> {name: value}, every name, type and required argument checked. Accepts
    ``--name=value``, ``--name value``, ``--name`` / ``--noname`` for bools, and ``-`` in names."""
    by_name = {o.name: o for o in options}
    positional = [o for o in options if o.required]
    values, args, i = {}, [], 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--":
            args.append(token)
            continue
        name, has_value, text = token[2:].partition("=")
        name = name.replace("-", "_")
        opt = by_name.get(name)
        if opt is None and name.startswith("no") and name[2:] in by_name and by_name[name[2:]].kind is bool \
                and not has_value:
            opt, has_value, text = by_name[name[2:]], True, "false"
        if opt is None:
            raise CommandLineError(f"unknown option --{name}: {_suggest(name, by_name)}")
        if opt.name in values:
            raise CommandLineError(f"--{opt.name} is given twice")
        if not has_value:
            if opt.kind is bool:
                text = "true"
            elif i < len(argv) and not argv[i].startswith("--"):
                text, i = argv[i], i + 1
            else:
                example = opt.default if opt.default is not None else opt.kind.__name__.upper()
                raise CommandLineError(f"--{opt.name} needs a value, e.g. --{opt.name}={example}")
        values[opt.name] = parse_value(opt, text)
    for opt in positional:
        if opt.name in values:
            continue
        if not args:
            raise CommandLineError(f"missing {opt.flag}")
        values[opt.name] = parse_value(opt, args.pop(0))
    if args:
        raise CommandLineError(f"unexpected argument {args[0]!r} (options are written --name=value)")
    return values


def help_text(prog: str, fn, options: list[Option]) -> str:
    summary = (inspect.getdoc(fn) or "").split("\n\n")[0].strip()
    positional = " ".join(o.flag for o in options if o.required)
    lines = [f"usage: {prog} {positional} [options]".replace("  ", " "), "", summary, ""]
    group = None
    for opt in options:
        heading = "arguments" if opt.required else (opt.group or "options")
        if heading != group:
            group = heading
            lines.append(f"{heading}:")
        default = "" if opt.required else f" (default: {opt.default!r})"
        lines.append(f"  {opt.flag}  {opt.type_name()}{default}")
        lines.append(f"      {opt.meaning}")
    return "\n".join(lines)


def _print_help(text: str) -> None:
    """Print and exit 0, also when piped into a pager or `head` that stops reading early."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    sys.exit(0)


def _subcommand(commands: dict, argv: list[str], prog: str):
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, commands))
        listing = "\n".join(f"  {name:<{width}}  {(inspect.getdoc(fn) or '').splitlines()[0]}"
                            for name, fn in commands.items())
        text = f"usage: {prog} COMMAND [options]   ({prog} COMMAND --help for its options)\n\n{listing}"
        if not argv:
            raise CommandLineError(f"missing COMMAND\n{text}")
        _print_help(text)
    name = argv[0]
    if name not in commands:
        close = difflib.get_close_matches(name, list(commands), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}?" if close else f"commands: {', '.join(commands)}"
        raise CommandLineError(f"unknown command {name!r}: {hint}")
    return name, commands[name], argv[1:]


def _literal(value) -> str:
    """A value as fire reads it back unchanged: strings quoted, so '64' stays a str."""
    return repr(value) if isinstance(value, str) else str(value)


def is_user_error(e: BaseException) -> bool:
    from pipeline.errors import UserError

    if isinstance(e, UserError):
        return True
    return isinstance(e, OSError) and e.errno in USER_ERRNOS


def _print_error(message: str) -> None:
    """Once per job, and last. Under torchrun every rank usually fails alike, and torchrun prints
    its own failure summary after the ranks exit: the message goes into torchrun's error file,
    which puts it on that summary's last line ("Root Cause ... traceback"). The first rank of each
    node (each node's torchrun prints its own summary) reports at once; another rank waits a moment
    first: if its node's first rank failed too, torchrun stops it meanwhile (the message is not
    repeated per rank), else its own error is reported."""
    rank, error_file = os.environ.get("RANK"), os.environ.get("TORCHELASTIC_ERROR_FILE")
    # the rank on its node, for where to print only (data sharding uses the dp rank, never this)
    first_on_node = os.environ.get("LOCAL_RANK", rank) in (None, "0")
    if error_file and rank is not None:
        if not first_on_node:
            time.sleep(OTHER_RANK_DELAY_S)
        try:
            # A str message is shown as is; the timestamp makes the first reporter the root cause.
            Path(error_file).write_text(json.dumps({"message": f"error: {message}",
                                                    "timestamp": int(time.time())}))
            return
        except OSError:
            pass  # no error file after all: print
    if first_on_node:
        print(f"error: {message}", file=sys.stderr, flush=True)


def run_cli(command, known: tuple = (), argv: list[str] | None = None, prog: str | None = None,
            extra: dict | None = None) -> None:
    """Check ``argv`` (default: sys.argv[1:]) against ``command`` (a function, or {name: function}
    for subcommands), then run it under fire. ``extra``: {subcommand or "": [Option]} for the
    keys a function takes through ``**kwargs`` (the trainer's config keys)."""
    import fire

    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or (sys.argv[0] if not os.path.isabs(sys.argv[0]) else Path(sys.argv[0]).name)
    extra = extra or {}
    try:
        name = ""
        if isinstance(command, dict):
            name, fn, argv = _subcommand(command, argv, prog)
            prog = f"{prog} {name}"
        else:
            fn = command
        options = options_of(fn) + list(extra.get(name, ()))
        if "-h" in argv or "--help" in argv:
            _print_help(help_text(prog, fn, options))
        values = parse_args(options, argv)
    except CommandLineError as e:
        _print_error(f"{e} (see {prog} --help)")
        sys.exit(USAGE_EXIT)
    rendered = [_literal(values.pop(o.name)) for o in options if o.required]
    rendered += [f"--{k}={_literal(v)}" for k, v in values.items()]
    try:
        fire.Fire(fn, command=rendered, name=prog)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(INTERRUPT_EXIT)
    except Exception as e:  # noqa: BLE001 (re-raised below unless the user can fix it)
        if not (is_user_error(e) or isinstance(e, known)):
            raise
        _print_error(str(e))
        sys.exit(ERROR_EXIT)
