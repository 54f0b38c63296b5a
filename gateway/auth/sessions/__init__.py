"""Browser login: the OIDC authorization code flow with PKCE, sealed sessions, race-free
refresh and logout (issue 18). Pure building blocks (cookies, sealing, login state, callback
and token checks, sessions), the I/O edges (token endpoint, Redis), and their joints with the
request path: ``gate`` (a session route's decision, called by ``Decider.decide``),
``endpoints`` (callback, logout, back-channel logout) and ``logins`` (all of a runtime's
logins, asked by the listener). Each module's first line names its RFC."""
