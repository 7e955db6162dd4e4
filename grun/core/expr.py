"""grun's own small expression language, for policy rules (grun.core.rules): tokens, then a recursive-descent
parser that turns an expression into closures, once; no eval, no Python. It knows no job: the caller names the
fields (each a getter of the environment an expression runs on) and the functions.

    expr    := and ("or" and)*               and := not ("and" not)*
    not     := "not" not | value [OP value]  OP  := == != < <= > >= ~ !~ like in | not in
    value   := atom ("." NAME | "[" expr "]")*
    atom    := NUMBER[UNIT] | "-" NUMBER | STRING | NAME | NAME "(" expr ")" | "[" [expr ("," expr)*] "]"
             | "(" expr ")" | true | false | null

Units: K M G T (KB, MiB...) are sizes in MB, as memory is (2G is 2048); s m h d w are durations in seconds
(30m is 1800). `~` is a regex search and `like` a glob match (a list matches when an item does); `in` looks in
a list, a mapping's keys or a string. A missing field, label, key or argument is null, and an order
comparison with null is false; a number and a numeric string compare as numbers (labels are strings).
"""

import fnmatch
import operator
import re

_TOKEN = re.compile(r"(?P<num>(?:\d+(?:\.\d*)?|\.\d+)[A-Za-z]*)|(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
                    r"|(?P<name>[A-Za-z_]\w*)|(?P<op>==|!=|<=|>=|!~|[-<>~.,()\[\]])|(?P<bad>\S)")
_KEYWORDS = {"and", "or", "not", "in", "like", "true", "false", "null"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "mb": 1, "mB": 1, **{u + b: mb for u, mb in (
    ("k", 1 / 1024), ("K", 1 / 1024), ("M", 1), ("G", 1024), ("g", 1024), ("T", 2 ** 20), ("t", 2 ** 20))
    for b in ("", "B", "iB", "b")}}


class RuleError(ValueError):
    """A rule that does not compile; `at`, when known: the offset of the problem in an expression's text (an
    int), or where in the config file ("LINE:COLUMN", grun.core.rules), which grun.config then reports."""

    def __init__(self, message: str, at: int | str | None = None):
        super().__init__(message)
        if at is not None:
            self.at = at


def _number(x):
    if isinstance(x, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?\s*", x, re.IGNORECASE):
        return float(x)
    return None if isinstance(x, (bool, str)) or not isinstance(x, (int, float)) else x


def _equal(a, b) -> bool:
    na, nb = _number(a), _number(b)
    return na == nb if na is not None and nb is not None else a == b


def _order(test):
    def compare(a, b):
        na, nb = _number(a), _number(b)
        if a is None or b is None or isinstance(a, str) and isinstance(b, str) and (na is None or nb is None):
            return a is not None and b is not None and test(a, b)
        if na is None or nb is None:
            raise TypeError(f"cannot compare {a!r} with {b!r}")
        return test(na, nb)
    return compare


_any = lambda test: lambda a, p: a is not None and any(test(str(x), str(p))
                                                       for x in (a if isinstance(a, list) else [a]))
_contains = lambda a, b: b is not None and (str(a) in b if isinstance(b, str) else a in b)
OPERATORS = {"==": _equal, "!=": lambda a, b: not _equal(a, b), "<": _order(operator.lt), "<=": _order(operator.le),
             ">": _order(operator.gt), ">=": _order(operator.ge), "~": _any(lambda a, p: re.search(p, a)),
             "!~": lambda a, b: not OPERATORS["~"](a, b), "like": _any(fnmatch.fnmatchcase),
             "in": _contains, "not in": lambda a, b: not _contains(a, b)}
FUNCTIONS = {"len": lambda env, x: None if x is None else len(x)}
_JOIN = {"or": lambda a, b: lambda env: a(env) or b(env), "and": lambda a, b: lambda env: a(env) and b(env)}


def _item(get, key):
    def item(env):
        obj, k = get(env), key(env)
        if isinstance(obj, dict):
            return obj.get(k)
        i = _number(k)
        return obj[int(i)] if isinstance(obj, (list, str)) and i is not None and -len(obj) <= i < len(obj) else None
    return item


def _const(value):
    f = lambda env: value
    f.const = value
    return f


class _Parser:
    def __init__(self, text: str, fields: dict, functions: dict):
        self.text, self.fields, self.functions, self.i = text, fields, {**FUNCTIONS, **functions}, 0
        self.compares: list[tuple] = []  # (op, left, right) of each comparison, for a caller's checks
        self.tokens = [("kw" if m[0] in _KEYWORDS else m.lastgroup, m[0], m.start()) for m in _TOKEN.finditer(text)]
        self.tokens += [("end", "", len(text.rstrip()))] * 2

    def error(self, message: str, token=None):
        kind, text, pos = token or self.tokens[self.i]
        return RuleError(f"{message} at {'the end' if kind == 'end' else repr(text)} in: {self.text.strip()}", pos)

    def accept(self, *words) -> str | None:
        kind, text, _ = self.tokens[self.i]
        found = kind in ("kw", "op") and text in words
        self.i += found
        return text if found else None

    def expect(self, word: str) -> None:
        if not self.accept(word):
            raise self.error(f"expected {word!r}")

    def expr(self, word: str = "or"):
        f = self.expr("and") if word == "or" else self.negation()
        while self.accept(word):
            f = _JOIN[word](f, self.expr("and") if word == "or" else self.negation())
        return f

    def negation(self):
        if self.accept("not"):
            f = self.negation()
            return lambda env: not f(env)
        left = self.value()
        op = self.accept(*OPERATORS) or self.tokens[self.i + 1][1] == "in" and self.accept("not") and "not in"
        if not op:
            return left
        self.i += op == "not in"
        token, right, test = self.tokens[self.i], self.value(), OPERATORS[op]
        try:
            re.compile(right.const) if op in ("~", "!~") and isinstance(getattr(right, "const", None), str) else None
        except re.error as e:
            raise self.error(f"bad regular expression ({e})", token) from None
        self.compares.append((op, left, right))
        return lambda env: test(left(env), right(env))

    def value(self):
        f = self.atom()
        while word := self.accept(".", "["):
            if word == "[":
                key = self.expr()
                self.expect("]")
            elif self.tokens[self.i][0] in ("name", "kw"):
                key, self.i = _const(self.tokens[self.i][1]), self.i + 1
            else:
                raise self.error("expected a name after '.'")
            f = _item(f, key)
        return f

    def atom(self):
        token = kind, text, _ = self.tokens[self.i]
        self.i += 1
        if kind == "num" or text == "-" and self.tokens[self.i][0] == "num":
            if text == "-":
                text, self.i = "-" + self.tokens[self.i][1], self.i + 1
            number, unit = re.fullmatch(r"(-?[\d.]+)([A-Za-z]*)", text).groups()
            if unit and unit not in _UNITS:
                raise self.error("unknown unit (sizes K M G T, durations s m h d w)", token)
            number = float(number) * _UNITS.get(unit, 1)
            return _const(int(number) if number == int(number) else number)
        if kind == "str" or kind == "kw" and text in ("true", "false", "null"):
            return _const({"true": True, "false": False, "null": None}[text] if kind == "kw" else
                          re.sub(r"\\([\\\"'])", r"\1", text[1:-1]))
        if text in ("(", "["):
            items = [] if text == "[" and self.accept("]") else [self.expr()]
            while text == "[" and items and not self.accept("]"):
                self.expect(",")
                items.append(self.expr())
            if text == "(":
                self.expect(")")
            elif all(hasattr(item, "const") for item in items):  # a list of constants: one
                return _const([item.const for item in items])
            return items[0] if text == "(" else lambda env: [item(env) for item in items]
        if kind == "name" and self.accept("("):
            if text not in self.functions:
                raise self.error(f"unknown function (known: {', '.join(self.functions)})", token)
            arg, function = self.expr(), self.functions[text]
            self.expect(")")
            return lambda env: function(env, arg(env))
        if kind == "name" and text in self.fields:
            return self.fields[text]
        if kind == "name":
            from ..values import close_to  # (only for the error)
            raise self.error(f"unknown field (known: {', '.join(self.fields)}){close_to(text, self.fields)}", token)
        raise self.error("unterminated string" if text in ("'", '"') else "expected a value", token)


def compile_expr(text, fields: dict, functions: dict | None = None, compares: list | None = None):
    """The expression as a function of an environment (`fields`' getters and `functions` read it); a RuleError.
    `compares` gets each comparison in it: (op, left, right), a constant side's value its `.const`."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError(f"expected a condition, got {text!r}", 0)
    parser = _Parser(text, fields, functions or {})
    f = parser.expr()
    if parser.tokens[parser.i][0] != "end":
        raise parser.error("unexpected")
    compares is None or compares.extend(parser.compares)
    return f
