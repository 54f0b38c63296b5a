"""Browser login: the OIDC authorization code flow with PKCE, sealed sessions, race-free
refresh and logout (issue 18). Pure building blocks plus the I/O edges (token endpoint,
Redis); the HTTP endpoints join them elsewhere. Each module's first line names its RFC."""
