"""The config loader: YAML with line marks, ${VAR} interpolation, schema and reference errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config.errors import ConfigError, ConfigIssue, format_key_path
from gateway.config.loader import load_config, load_config_text
from gateway.config.yaml import MAX_NODES, load_yaml_text
from tests.support.redis import TEST_CACHE_KEY

CONFIGS = Path(__file__).parent / "configs"

UPSTREAMS = """\
upstreams:
  orders: {url: "http://127.0.0.1:9000"}
"""
ISSUER = """\
issuers:
  - issuer: https://auth.example.com/
    audiences: [api]
"""
ROUTE = """\
routes:
  - match: {path: /orders/**}
    upstream: orders
"""
VALID = UPSTREAMS + ISSUER + ROUTE  # lines 1-2, 3-5, 6-8


def _error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), "gw.yaml", env or {})
    return str(info.value)


# --- a whole config ------------------------------------------------------------------------


def test_full_config_loads() -> None:
    env = {
        "INTROSPECTION_SECRET": "s3cret: #not a comment",
        "GW_PORT": "8443",
        "CACHE_KEY": TEST_CACHE_KEY,
    }
    loaded = load_config(CONFIGS / "full.yaml", env)
    config = loaded.config

    assert config.listen.port == 8443
    assert config.limits.keepalive_timeout == 30.0
    orders, billing = config.upstreams["orders"], config.upstreams["billing svc"]
    assert (orders.timeouts.connect, orders.timeouts.read, orders.timeouts.total) == (0.25, 30, 300)
    assert billing.url == "unix:/run/billing.sock"
    assert billing.pool.max_connections == 32  # from the << merge of &orders
    assert [issuer.key for issuer in config.issuers] == ["main", "https://partner.example.com/"]
    introspection = config.issuers[0].introspection
    assert introspection is not None and introspection.client.client_secret is not None
    assert introspection.client.client_secret.get_secret_value() == "s3cret: #not a comment"
    assert config.routes[0].match.methods == ["GET"]
    assert config.routes[2].match.path.kind == "regex"
    assert loaded.source.file == str(CONFIGS / "full.yaml")
    assert loaded.source.line_of(("routes", 2, "match", "path", "regex")) == 51
    # Merged keys point at the text they came from: the anchored mapping.
    assert loaded.source.line_of(("upstreams", "billing svc", "pool")) == 15


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_UPSTREAM", "http://127.0.0.1:9999")
    text = VALID.replace("http://127.0.0.1:9000", "${GW_TEST_UPSTREAM}")
    loaded = load_config_text(text)
    assert loaded.config.upstreams["orders"].url == "http://127.0.0.1:9999"
    assert loaded.source.file == "<string>"


def test_anonymous_routes_need_no_issuer() -> None:
    text = UPSTREAMS + "routes:\n  - {upstream: orders, auth: anonymous}\n"
    assert load_config_text(text, env={}).config.issuers == []


# --- interpolation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        pytest.param("${A}", {"A": "x"}, "x", id="whole-value"),
        pytest.param("pre-${A}-post", {"A": "x"}, "pre-x-post", id="inside-text"),
        pytest.param("${A:-dflt}", {}, "dflt", id="default-when-unset"),
        pytest.param("${A:-dflt}", {"A": ""}, "dflt", id="default-when-empty"),
        pytest.param("${A:-dflt}", {"A": "set"}, "set", id="default-unused"),
        pytest.param("${A}", {"A": ""}, "", id="empty-is-set"),
        pytest.param("${A:-}", {}, "", id="empty-default"),
        pytest.param("$${A}", {}, "${A}", id="escape"),
        pytest.param("$${A}-${A}", {"A": "x"}, "${A}-x", id="escape-and-variable"),
        pytest.param("$A $$ $", {}, "$A $$ $", id="lone-dollars-kept"),
        pytest.param("${A}", {"A": "k: v # c"}, "k: v # c", id="value-not-reparsed"),
        pytest.param("${A}", {"A": "${B}"}, "${B}", id="value-not-reinterpolated"),
        pytest.param("${A}", {"A": "[1, 2]"}, "[1, 2]", id="flow-text-stays-string"),
    ],
)
def test_interpolation(value: str, env: dict[str, str], expected: str) -> None:
    doc = load_yaml_text(f"key_prefix: '{value}'\n", "gw.yaml", env)
    assert doc.data == {"key_prefix": expected}


def test_interpolated_number_is_converted_by_the_schema() -> None:
    loaded = load_config_text("listen: {port: '${PORT}'}\n" + VALID, env={"PORT": "8081"})
    assert loaded.source.data["listen"]["port"] == "8081"
    assert loaded.config.listen.port == 8081


def test_keys_are_not_interpolated() -> None:
    doc = load_yaml_text("${A}: ${A}\n", "gw.yaml", {"A": "x"})
    assert doc.data == {"${A}": "x"}


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        pytest.param("250ms", 0.25, id="ms"),
        pytest.param("30s", 30.0, id="s"),
        pytest.param("5m", 300.0, id="m"),
        pytest.param("1h", 3600.0, id="h"),
        pytest.param("1.5", 1.5, id="bare-number"),
    ],
)
def test_durations(duration: str, seconds: float) -> None:
    text = VALID.replace('"http://127.0.0.1:9000"', f'"http://h", timeouts: {{read: {duration}}}')
    assert load_config_text(text, env={}).config.upstreams["orders"].timeouts.read == seconds


# --- errors --------------------------------------------------------------------------------

TYPO = """\
upstreams:
  orders:
    url: http://127.0.0.1:9000
issuers:
  - issuer: https://auth.example.com/
    audiences: [api]
routes:
  - match:
      path: /health
    upstream: orders
  - match:
      pth: /orders/**
    upstream: orders
"""

SCHEMA_ERRORS = [
    pytest.param(
        UPSTREAMS + ISSUER + "routes:\n  - match: {path: /a, methods: [GET, trace]}\n"
        "    upstream: orders\n",
        "gw.yaml:7: routes[0].match.methods[1]: TRACE is never relayed (the gateway answers it "
        "405): leave it out",
        id="a-method-never-relayed",
    ),
    pytest.param(
        TYPO,
        "gw.yaml:12: routes[1].match.pth: unknown key 'pth' (expected one of: host, methods, path)",
        id="unknown-key",
    ),
    pytest.param(
        VALID + "listen: {hots: x}\n",
        "gw.yaml:9: listen.hots: unknown key 'hots' (expected one of: host, port, tls)",
        id="unknown-key-flow",
    ),
    pytest.param(
        VALID + "verbose: true\n",
        "gw.yaml:9: verbose: unknown key 'verbose' (expected one of: admin, cache, decision, "
        "defaults, forwarding, issuers, limits, listen, logging, logins, rate_limiting, "
        "resources, routes, shutdown, token_cache, token_signing, tracing, upstreams)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        VALID + "    require: {claims: {groups: {equal: ops}}}\n",
        "gw.yaml:9: routes[0].require.claims.groups.equal: unknown key 'equal' "
        "(expected one of: contains, equals, one_of)",
        id="unknown-key-under-a-dict",
    ),
    pytest.param(
        UPSTREAMS + ISSUER + "    mode: auto\n    introspection:\n      client:\n"
        "        client_id: gw\n        secret: x\n" + ROUTE,
        "gw.yaml:10: issuers[0].introspection.client.secret: unknown key 'secret' (expected one "
        "of: client_id, client_secret, key_id, method, private_key_alg, private_key_file)",
        id="unknown-key-under-an-optional-model",
    ),
    pytest.param(
        UPSTREAMS + ISSUER + "routes:\n  - match: {path: /a}\n",
        "gw.yaml:7: routes[0].upstream: missing required key 'upstream'",
        id="missing-key-has-parent-line",
    ),
    pytest.param(
        ISSUER + ROUTE,
        "gw.yaml: upstreams: missing required key 'upstreams'",
        id="missing-top-level-key",
    ),
    pytest.param(
        UPSTREAMS + ISSUER + "    keys: {discovery: true, file: jwks.json}\n" + ROUTE,
        "gw.yaml:6: issuers[0].keys: give exactly one of discovery: true, jwks_uri, file or jwks",
        id="validator-message-without-value-error-prefix",
    ),
    pytest.param(
        'upstreams:\n  orders: {url: "http://h", timeouts: {connect: soon}}\n' + ISSUER + ROUTE,
        "gw.yaml:2: upstreams.orders.timeouts.connect: "
        "expected a duration such as 250ms, 30s or 5m",
        id="bad-duration",
    ),
    pytest.param(
        "listen:\n  port: 70000\n" + VALID,
        "gw.yaml:2: listen.port: Input should be less than or equal to 65535",
        id="port-range",
    ),
    pytest.param(
        'upstreams:\n  "my svc": {url: "ftp://h"}\n' + ISSUER + ROUTE.replace("orders", "my svc"),
        'gw.yaml:2: upstreams["my svc"].url: '
        "expected an http://, https:// or unix: URL with a host",
        id="quoted-key-path",
    ),
    pytest.param(
        "forwarding:\n  proxy_only_headers: [X-Ok, X Bad]\n" + VALID,
        "gw.yaml:2: forwarding.proxy_only_headers[1]: String should match pattern "
        "'^[!#$%&'*+\\-.^_`|~0-9A-Za-z]+$'",
        id="proxy-only-header-not-a-name",
    ),
    pytest.param(
        'upstreams:\n  orders: {url: "http://bücher.example"}\n' + ISSUER + ROUTE,
        "gw.yaml:2: upstreams.orders.url: "
        "the host must be ASCII (an international name in its xn-- form)",
        id="non-ascii-upstream-host",
    ),
    pytest.param(
        VALID + "    require: {claims: {groups: {equals: [ops]}}}\n",
        "gw.yaml:9: routes[0].require.claims.groups.equals: Input should be a valid string, "
        "a valid integer, a valid number or a valid boolean",
        id="union-branches-said-once",
    ),
    pytest.param(
        VALID + 'defaults:\n  identity_headers: {"X User": "{sub}"}\n',
        'gw.yaml:10: defaults.identity_headers["X User"]: invalid key: String should match '
        "pattern '^[!#$%&'*+\\-.^_`|~0-9A-Za-z]+$'",
        id="bad-dict-key",
    ),
    pytest.param(
        "limits: {max_headers: lots}\n" + VALID + "    websocket: maybe\n",
        "gw.yaml:1: limits.max_headers: Input should be a valid integer, unable to parse string "
        "as an integer\n"
        "gw.yaml:10: routes[0].websocket: Input should be a valid boolean, unable to interpret "
        "input",
        id="all-issues-sorted-by-line",
    ),
]

REFERENCE_ERRORS = [
    pytest.param(
        VALID.replace("upstream: orders", "upstream: billing"),
        "gw.yaml:8: routes[0].upstream: unknown upstream 'billing' (expected one of: orders)",
        id="unknown-upstream",
    ),
    pytest.param(
        VALID + "    issuers: [https://auth.example.com/, nope]\n",
        "gw.yaml:9: routes[0].issuers[1]: unknown issuer 'nope' "
        "(expected one of: https://auth.example.com/)",
        id="unknown-route-issuer",
    ),
    pytest.param(
        VALID + "defaults:\n  issuers:\n    - main\n",
        "gw.yaml:11: defaults.issuers[0]: unknown issuer 'main' "
        "(expected one of: https://auth.example.com/)",
        id="unknown-default-issuer",
    ),
    pytest.param(
        UPSTREAMS + ISSUER + ISSUER.removeprefix("issuers:\n") + ROUTE,
        "gw.yaml:6: issuers[1].issuer: issuer key 'https://auth.example.com/' is already used "
        "by issuers[0].issuer on line 4",
        id="duplicate-issuer-key",
    ),
    pytest.param(
        UPSTREAMS
        + ISSUER
        + "    name: main\n"
        + ISSUER.removeprefix("issuers:\n")
        + "    name: main\n"
        + ROUTE,
        "gw.yaml:9: issuers[1].name: issuer key 'main' is already used by issuers[0].name "
        "on line 6",
        id="duplicate-issuer-name",
    ),
    pytest.param(
        VALID + "    name: r\n  - {name: r, upstream: orders}\n",
        "gw.yaml:10: routes[1].name: route name 'r' is already used by routes[0].name on line 9",
        id="duplicate-route-name",
    ),
    pytest.param(
        UPSTREAMS + ROUTE,
        "gw.yaml:4: routes[0]: auth is required but no issuer can verify tokens here "
        "(configure an issuer, or set auth: anonymous)",
        id="auth-required-without-issuers",
    ),
    pytest.param(
        UPSTREAMS + ROUTE + "    auth: required\n",
        "gw.yaml:6: routes[0].auth: auth is required but no issuer can verify tokens here "
        "(configure an issuer, or set auth: anonymous)",
        id="explicit-auth-required-without-issuers",
    ),
    pytest.param(
        VALID + "    issuers: []\n",
        "gw.yaml:9: routes[0].issuers: auth is required but no issuer can verify tokens here "
        "(configure an issuer, or set auth: anonymous)",
        id="route-with-empty-issuers",
    ),
    pytest.param(
        VALID.replace("{path: /orders/**}", "\n      path: {regex: '^/(a'}"),
        "gw.yaml:8: routes[0].match.path.regex: invalid regular expression: missing ): ^/(a",
        id="bad-regex",
    ),
    pytest.param(
        VALID.replace("/orders/**", "/orders/***"),
        "gw.yaml:7: routes[0].match.path: '**' must be a whole path segment, not '***' "
        "(use * within a segment)",
        id="glob-shorthand",
    ),
    pytest.param(
        VALID.replace("{path: /orders/**}", "\n      path:\n        glob: /orders/a**"),
        "gw.yaml:9: routes[0].match.path.glob: '**' must be a whole path segment, not 'a**' "
        "(use * within a segment)",
        id="glob-explicit",
    ),
    pytest.param(
        VALID.replace("{path: /orders/**}", "\n      path: {prefix: '/v2/../admin%2F;x'}"),
        "gw.yaml:8: routes[0].match.path.prefix: prefix path '/v2/../admin%2F;x': "
        "The path encodes a forbidden character: %2F.",
        id="issue-13-unnormalised-prefix",
    ),
    pytest.param(
        VALID.replace("/orders/**", "/orders/../admin"),
        "gw.yaml:7: routes[0].match.path: exact path '/orders/../admin' can never match a "
        "normalised path; write '/admin'",
        id="shorthand-unnormalised-exact",
    ),
    pytest.param(
        VALID.replace("{path: /orders/**}", "\n      path:\n        glob: /orders;v=1/*"),
        "gw.yaml:9: routes[0].match.path.glob: glob path '/orders;v=1/*': paths are matched "
        "without ';' parameters",
        id="glob-with-path-parameters",
    ),
    pytest.param(
        VALID.replace("{path: /orders/**}", "\n      path: {regex: '/a(?=b)'}"),
        "gw.yaml:8: routes[0].match.path.regex: invalid regular expression: invalid perl "
        "operator: (?= (RE2 syntax: no backreferences, lookaround or possessive quantifiers)",
        id="regex-lookahead",
    ),
    pytest.param(
        VALID.replace("{path: /orders/**}", "\n      path: {regex: '/v2/\\.\\./admin/.*'}"),
        "gw.yaml:8: routes[0].match.path.regex: regex '/v2/\\\\.\\\\./admin/.*' starts "
        "with '/v2/../admin/', which no normalised path does",
        id="regex-unnormalised-literal",
    ),
    pytest.param(
        'upstreams:\n  orders: {url: "http://h", paths: {trailing_dot: ignored}}\n'
        + ISSUER
        + ROUTE.replace("/orders/**", "/orders/..."),
        "gw.yaml:7: routes[0].match.path: exact path '/orders/...' can never match: A path "
        "segment of only dots or spaces is read differently by upstreams that trim them.",
        id="pattern-impossible-under-upstream-semantics",
    ),
    pytest.param(
        'upstreams:\n  orders: {url: "http://h", paths: {case: folded}}\n' + ISSUER + ROUTE,
        "gw.yaml:2: upstreams.orders.paths.case: Input should be 'sensitive' or 'insensitive'",
        id="unknown-path-semantics",
    ),
    pytest.param(
        VALID + "    rewrite: {strip_prefix: /orders/./x, add_prefix: '/v2;x'}\n",
        "gw.yaml:9: routes[0].rewrite.strip_prefix: strip_prefix path '/orders/./x' can never "
        "match a normalised path; write '/orders/x'\n"
        "gw.yaml:9: routes[0].rewrite.add_prefix: add_prefix path '/v2;x': paths are matched "
        "without ';' parameters",
        id="rewrite-prefixes",
    ),
]


@pytest.mark.parametrize(("text", "expected"), SCHEMA_ERRORS + REFERENCE_ERRORS)
def test_config_errors(text: str, expected: str) -> None:
    assert _error(text) == expected


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        pytest.param(
            VALID + "cache:\n  key_prefix: ${PREFIX}\n",
            {},
            "gw.yaml:10: cache.key_prefix: environment variable PREFIX is not set "
            "(set it, or give a default: ${PREFIX:-…})",
            id="missing-variable",
        ),
        pytest.param(
            VALID + "cache:\n  key_prefix: ${A}${B}\n",
            {"A": "a"},
            "gw.yaml:10: cache.key_prefix: environment variable B is not set "
            "(set it, or give a default: ${B:-…})",
            id="second-missing-variable",
        ),
        pytest.param(
            VALID + "cache:\n  key_prefix: ${A}-${A}\n",
            {},
            "gw.yaml:10: cache.key_prefix: environment variable A is not set "
            "(set it, or give a default: ${A:-…})",
            id="same-variable-twice-said-once",
        ),
        pytest.param(
            "cache: {key_prefix: '${1X}'}\n" + VALID,
            {},
            "gw.yaml:1: cache.key_prefix: bad reference '${1X}' (expected ${NAME} or "
            "${NAME:-default}, or $${ for a literal ${)",
            id="bad-variable-name",
        ),
        pytest.param(
            "cache: {key_prefix: '${X'}\n" + VALID,
            {"X": "x"},
            "gw.yaml:1: cache.key_prefix: bad reference '${' (expected ${NAME} or "
            "${NAME:-default}, or $${ for a literal ${)",
            id="unterminated-reference",
        ),
        pytest.param(
            "upstreams:\n  orders: {url: '${U}'}\n  other: {url: '${V}'}\n" + ISSUER + ROUTE,
            {},
            "gw.yaml:2: upstreams.orders.url: environment variable U is not set "
            "(set it, or give a default: ${U:-…})\n"
            "gw.yaml:3: upstreams.other.url: environment variable V is not set "
            "(set it, or give a default: ${V:-…})",
            id="all-missing-variables-at-once",
        ),
    ],
)
def test_interpolation_errors(text: str, env: dict[str, str], expected: str) -> None:
    assert _error(text, env) == expected


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(c)}: &{chr(c)} [*{chr(c - 1)}, *{chr(c - 1)}, *{chr(c - 1)}, *{chr(c - 1)}, "
    f"*{chr(c - 1)}, *{chr(c - 1)}, *{chr(c - 1)}, *{chr(c - 1)}, *{chr(c - 1)}, *{chr(c - 1)}]\n"
    for c in range(ord("b"), ord("j"))
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "upstreams:\n  orders:\n    url: http://a\n    url: http://b\n",
            "gw.yaml:4: upstreams.orders.url: duplicate key 'url' (first on line 3)",
            id="duplicate-key",
        ),
        pytest.param(
            "upstreams:\n  orders: {url: http://a\n  x: 1\n",
            "gw.yaml:3: invalid YAML: expected ',' or '}', but got ':' "
            "(while parsing a flow mapping on line 2)",
            id="syntax-error",
        ),
        pytest.param(
            "listen:\n  port: 1\n    host: x\n",
            "gw.yaml:3: invalid YAML: mapping values are not allowed here",
            id="syntax-error-bad-indent",
        ),
        pytest.param(
            "a: 1\nb: x\x01\n",
            "gw.yaml:2: invalid YAML: character U+0001 is not allowed",
            id="control-character",
        ),
        pytest.param("", "gw.yaml: the config is empty", id="empty"),
        pytest.param("# nothing here\n\n", "gw.yaml: the config is empty", id="comments-only"),
        pytest.param("---\n", "gw.yaml: the config is empty", id="null-document"),
        pytest.param(
            "\n- upstreams\n",
            "gw.yaml:2: the top level must be a mapping of keys, not a list",
            id="top-level-list",
        ),
        pytest.param(
            "just text\n",
            "gw.yaml:1: the top level must be a mapping of keys, not a single value",
            id="top-level-scalar",
        ),
        pytest.param(
            "upstreams:\n  orders:\n    url: !!python/object/apply:os.system [echo hi]\n",
            "gw.yaml:3: upstreams.orders.url: unsupported YAML tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'",
            id="python-tag-refused",
        ),
        pytest.param(
            "limits: !!set {a, b}\n",
            "gw.yaml:1: limits: unsupported YAML tag 'tag:yaml.org,2002:set'",
            id="set-tag-refused",
        ),
        pytest.param(
            BOMB,
            f"gw.yaml:1: the config expands to more than {MAX_NODES} nodes (through aliases?)",
            id="alias-bomb",
        ),
        pytest.param(
            "a: &a\n  - *a\n",
            "gw.yaml:1: a[0]: an alias refers to a node that contains it",
            id="recursive-alias",
        ),
        pytest.param(
            "a: &a {x: 1, <<: *a}\n",
            "gw.yaml:1: a: an alias refers to a node that contains it",
            id="recursive-merge",
        ),
        pytest.param(
            "a: {<<: [1]}\n",
            "gw.yaml:1: a: '<<' merges a mapping or a list of mappings",
            id="bad-merge",
        ),
        pytest.param(
            "? [a, b]\n: 1\n",
            "gw.yaml:1: a key must be a plain string, not a collection",
            id="collection-key",
        ),
    ],
)
def test_yaml_errors(text: str, expected: str) -> None:
    assert _error(text) == expected


def test_nesting_too_deep() -> None:
    assert (
        _error("a: " + "[" * 5000 + "]" * 5000 + "\n") == "gw.yaml: the config is nested too deeply"
    )


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"a: \xff\n")
    cases = {
        missing: f"{missing}: the config file does not exist",
        tmp_path: f"{tmp_path}: cannot read the config: Is a directory",
        binary: f"{binary}: the config is not UTF-8 text (invalid start byte)",
    }
    for path, expected in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(path, {})
        assert str(info.value) == expected
        assert info.value.file == str(path)


# --- the pieces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        pytest.param((), "", id="root"),
        pytest.param(("routes", 3, "match", "path"), "routes[3].match.path", id="nested"),
        pytest.param(("upstreams", "my svc", "url"), 'upstreams["my svc"].url', id="space"),
        pytest.param(("upstreams", "3"), 'upstreams["3"]', id="digit-key-not-index"),
        pytest.param(("a.b",), '["a.b"]', id="dotted-root-key"),
        pytest.param(("h", 'say "hi"'), 'h["say \\"hi\\""]', id="quote-escaped"),
    ],
)
def test_format_key_path(loc: tuple[str | int, ...], expected: str) -> None:
    assert format_key_path(loc) == expected


def test_error_omits_unknown_parts() -> None:
    issues = [
        ConfigIssue("a.b", 3, "m1"),
        ConfigIssue("", 4, "m2"),
        ConfigIssue("c", None, "m3"),
        ConfigIssue("", None, "m4"),
    ]
    error = ConfigError("f.yaml", issues)
    assert error.issues == tuple(issues)
    assert str(error) == "f.yaml:3: a.b: m1\nf.yaml:4: m2\nf.yaml: c: m3\nf.yaml: m4"


def test_source_lines_and_error() -> None:
    doc = load_yaml_text("a:\n  b:\n    - x\n    -\n      c: 1\n", "gw.yaml", {})
    assert doc.lines[("a",)] == 1
    assert doc.lines[("a", "b", 1)] == 5
    assert doc.line_of(("a", "b", 1, "c", "missing")) == 5
    assert doc.line_of(("zzz",)) is None
    assert str(doc.error(("a", "b", 0), "bad")) == "gw.yaml:3: a.b[0]: bad"


def test_yaml_scalars_and_keys() -> None:
    doc = load_yaml_text("on: yes\n1: 0x10\nd: 2024-01-01\nn: ~\nf: 1.5\n", "gw.yaml", {})
    assert doc.data == {"on": True, "1": 16, "d": "2024-01-01", "n": None, "f": 1.5}
