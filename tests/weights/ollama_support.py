"""Reading a Modelfile and running its Go template, for the Ollama export tests.

Ollama itself does not install here, so these follow its documentation: a Modelfile is lines
of ``INSTRUCTION value`` (FROM, TEMPLATE, PARAMETER name value, SYSTEM, ...; ``#`` starts a
comment), a value may be "quoted" or span lines in triple quotes. ``render`` implements the
part of Go's text/template that prompt templates use: ``{{ .Field }}``, ``$``/``$var``
fields, ``if``/``else if``/``else``/``end``, ``range [$i, $m :=] pipeline``, the builtins
``eq and or not len slice index`` with parenthesised calls, and ``{{-``/``-}}`` trimming.
"""

from __future__ import annotations

import re
from typing import Any

INSTRUCTIONS = {"FROM", "TEMPLATE", "PARAMETER", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE",
                "REQUIRES"}


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, value) pairs; PARAMETER values keep their name: ("PARAMETER", "stop x")."""
    out: list[tuple[str, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        if word.upper() not in INSTRUCTIONS:
            raise ValueError(f"unknown Modelfile instruction {word!r}")
        head = ""
        if word.upper() == "PARAMETER":
            head, _, rest = rest.partition(" ")
            head += " "
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body:
                if i >= len(lines):
                    raise ValueError("unterminated triple-quoted value")
                body += "\n" + lines[i]
                i += 1
            value, _, tail = body.partition('"""')
            if tail.strip():
                raise ValueError(f"text after closing quotes: {tail!r}")
        elif rest.startswith('"'):
            if not rest.endswith('"') or len(rest) < 2:
                raise ValueError(f"unterminated quoted value: {rest!r}")
            value = rest[1:-1]
        else:
            value = rest
        out.append((word.upper(), head + value))
    return out


# ---------------------------------------------------------------------------- templates
_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(r'\(|\)|"(?:[^"\\]|\\.)*"|-?\d+|[$.\w]+')


def _lex(template: str) -> list[tuple[str, str]]:
    """Text and action pieces, with ``{{-`` / ``-}}`` whitespace trimming applied."""
    pieces: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for match in _ACTION.finditer(template):
        text = template[pos:match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", match.group(2)))
        pos, trim_next = match.end(), bool(match.group(3))
    tail = template[pos:]
    pieces.append(("text", tail.lstrip() if trim_next else tail))
    return pieces


def _parse(pieces: list[tuple[str, str]], i: int = 0) -> tuple[list, int, str]:
    """Nodes up to an ``end``/``else`` (returned as the stop keyword)."""
    nodes: list = []
    while i < len(pieces):
        kind, text = pieces[i]
        i += 1
        if kind == "text":
            nodes.append(("text", text))
        elif text == "end" or text == "else" or text.startswith("else if "):
            return nodes, i, text
        elif text.startswith("if "):
            branches, default = [], []
            cond = text[3:]
            while True:
                body, i, stop = _parse(pieces, i)
                branches.append((cond, body))
                if stop.startswith("else if "):
                    cond = stop[8:]
                    continue
                if stop == "else":
                    default, i, stop = _parse(pieces, i)
                if stop != "end":
                    raise ValueError("if without end")
                break
            nodes.append(("if", branches, default))
        elif text.startswith("range "):
            spec = text[6:]
            names: list[str] = []
            if ":=" in spec:
                left, spec = spec.split(":=")
                names = [n.strip() for n in left.split(",")]
            body, i, stop = _parse(pieces, i)
            if stop != "end":
                raise ValueError("range without end")
            nodes.append(("range", names, spec.strip(), body))
        else:
            nodes.append(("expr", text))
    return nodes, i, ""


def _truthy(value: Any) -> bool:
    return bool(value) if value is not None else False


def _field(value: Any, path: list[str]) -> Any:
    for name in path:
        if name:
            value = value[name]
    return value


def _eval(tokens: list[str], scope: dict) -> Any:
    """Evaluate one pipeline (a value, or a function applied to arguments)."""
    args: list[Any] = []
    names: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(tokens[j], 0)
                j += 1
            args.append(_eval(tokens[i + 1:j - 1], scope))
            names.append("")
            i = j
            continue
        if token.startswith('"'):
            args.append(bytes(token[1:-1], "utf-8").decode("unicode_escape"))
        elif re.fullmatch(r"-?\d+", token):
            args.append(int(token))
        elif token.startswith("$"):
            var, *path = token.split(".")
            args.append(_field(scope["$"] if var == "$" else scope[var], path))
        elif token.startswith("."):
            args.append(_field(scope["."], token.split(".")[1:]))
        else:
            args.append(None)
        names.append(token if not token.startswith(("$", ".", '"')) else "")
        i += 1
    functions = {
        "eq": lambda a, *b: any(a == x for x in b), "and": lambda *v: all(map(_truthy, v)),
        "or": lambda *v: any(map(_truthy, v)), "not": lambda v: not _truthy(v),
        "len": len, "slice": lambda v, start=0, stop=None: v[start:stop],
        "index": lambda v, k: v[k]}
    if names and names[0] in functions:
        return functions[names[0]](*args[1:])
    if len(args) != 1:
        raise ValueError(f"cannot evaluate {' '.join(tokens)!r}")
    return args[0]


def _run(nodes: list, scope: dict) -> str:
    out = ""
    for node in nodes:
        if node[0] == "text":
            out += node[1]
        elif node[0] == "expr":
            value = _eval(_TOKEN.findall(node[1]), scope)
            out += "" if value is None else str(value)
        elif node[0] == "if":
            for cond, body in node[1]:
                if _truthy(_eval(_TOKEN.findall(cond), scope)):
                    out += _run(body, scope)
                    break
            else:
                out += _run(node[2], scope)
        else:
            _, names, spec, body = node
            for index, item in enumerate(_eval(_TOKEN.findall(spec), scope)):
                inner = {**scope, ".": item}
                if len(names) == 2:
                    inner[names[0]], inner[names[1]] = index, item
                elif len(names) == 1:
                    inner[names[0]] = item
                out += _run(body, inner)
    return out


def render(template: str, messages: list[dict[str, str]]) -> str:
    """The prompt Ollama builds from ``messages`` with a ``.Messages`` template: ``.System``
    holds every system message joined by a blank line, ``.Messages`` all of them."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    data = {"System": system, "Prompt": "", "Response": "",
            "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    nodes, _, stop = _parse(_lex(template))
    if stop:
        raise ValueError(f"unexpected {{{{ {stop} }}}}")
    return _run(nodes, {"$": data, ".": data})
