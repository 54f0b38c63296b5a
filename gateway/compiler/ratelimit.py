"""Compile a route's ``rate_limits`` section into the limiter's values (issue 17)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.ratelimit import Rate, policy_field
from gateway.auth.ratelimit_keys import CompiledLimit, RouteLimits, compile_part
from gateway.config.errors import SettingError
from gateway.config.loader import LoadedConfig
from gateway.config.models import Route
from gateway.config.models.ratelimit import Limit, RouteRateLimits
from gateway.config.yaml import Loc


def _compile_limit(
    limit: Limit, *, route: str, group: str, replicas: int, share: bool
) -> CompiledLimit:
    rate = Rate.of(limit.limit, int(limit.window), limit.burst)
    return CompiledLimit(
        name=limit.name,
        namespace=f"{route}\x1f{group}\x1f{limit.name}",
        rate=rate,
        fallback=rate.share(replicas) if share else rate,
        parts=tuple(compile_part(part) for part in limit.key),
    )


def compile_route_limits(
    section: RouteRateLimits | None, *, route: str, replicas: int = 1, share: bool = True
) -> RouteLimits | None:
    """A route's limits; None when it has none. ``replicas`` and ``share`` come from the
    top-level ``rate_limiting`` (``expected_replicas``, ``when_redis_down == local_share``).
    """
    if section is None or not (section.limits or section.anonymous):
        return None
    compiled: dict[str, tuple[CompiledLimit, ...]] = {}
    for group, limits in (("limits", section.limits), ("anonymous", section.anonymous)):
        items = []
        for index, limit in enumerate(limits):
            try:
                items.append(_compile_limit(
                    limit, route=route, group=group, replicas=replicas, share=share
                ))  # fmt: skip
            except ValueError as exc:
                raise SettingError((group, index), str(exc)) from None
        compiled[group] = tuple(items)
    return RouteLimits(
        route=route,
        limits=compiled["limits"],
        anonymous=compiled["anonymous"],
        headers=section.headers,
        policy=policy_field([(c.name, c.rate) for c in compiled["limits"]]),
        anonymous_policy=policy_field([(c.name, c.rate) for c in compiled["anonymous"]]),
    )


@dataclass(frozen=True, slots=True)
class RateLimitingSettings:
    """The top-level ``rate_limiting``: how limits are held and shared."""

    max_keys: int
    shared: bool  # summed across replicas through cache.redis
    sync_interval: float
    key_prefix: str


def rate_limiting_settings(loaded: LoadedConfig) -> RateLimitingSettings:
    section = loaded.config.rate_limiting
    if section.redis and loaded.config.cache.redis is None:
        raise loaded.source.error(("rate_limiting", "redis"), "needs a cache.redis section")
    return RateLimitingSettings(
        section.max_keys, section.redis, section.sync_interval, section.key_prefix
    )


def route_limits(loaded: LoadedConfig, index: int, route: Route, name: str) -> RouteLimits | None:
    config = loaded.config
    section = route.rate_limits or config.defaults.rate_limits
    share = config.rate_limiting.when_redis_down == "local_share"
    try:
        return compile_route_limits(
            section, route=name, replicas=config.rate_limiting.expected_replicas, share=share
        )
    except SettingError as exc:
        where: Loc = ("routes", index) if route.rate_limits else ("defaults",)
        raise loaded.source.error((*where, "rate_limits", *exc.loc), str(exc)) from None
