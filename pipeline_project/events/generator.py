"""Realistic e-commerce clickstream events, deterministic by seed, with bad records on purpose.

Everything random comes from one `random.Random(seed)`; Faker (seeded per instance) only builds the
pools of users, products and search terms up front, so generation is fast and the same seed with the
same injected clock gives byte-identical records. Each record carries the verdict a correct pipeline
must reach (`good`, a filter reason, or `bad:<category>` for exactly one defect), which the producer
writes to the truth file.

Events follow contract version 1 unless a schema mix says otherwise (`schema_mix`, the producer's
`--schema-version` / `--schema-mix`). The version of each event is drawn from an RNG of its own, so
a mix changes how events are written, never which events the main RNG makes.

Several producer processes share one seed as separate *streams*: stream 0 is the seed's own
stream, and stream N > 0 draws from an RNG of its own over the same pools of users and products,
so the streams never repeat each other's event ids and each is reproducible on its own.
"""

from __future__ import annotations

import math
import random
import time
import urllib.parse
import zlib
from bisect import bisect
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import orjson
from faker import Faker

from pipeline_project.events.contract import (
    BOT_UA_RE,
    CONTRACT,
    CURRENCIES,
    ERROR_CATEGORIES,
    EVENT_TYPES,
    GOOD,
    ID_MAX_LENGTH,
    MAX_DEPTH,
    MAX_KEYS,
    MAX_MESSAGE_BYTES,
    NUMERIC_BOUNDS,
    PARSE_CATEGORIES,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    TEST_USER_PREFIX,
    TEXT_LIMITS,
    TRANSFORM_CATEGORIES,
    bad_verdict,
)
from pipeline_project.utc import UTC_SECONDS_FORMAT

# Categories the producer can create: a transform error needs a valid event the transform cannot
# handle, which is a bug, not an input.
BAD_CATEGORIES: Final[tuple[str, ...]] = tuple(
    c for c in ERROR_CATEGORIES if c not in TRANSFORM_CATEGORIES
)
DUPLICATE: Final = "duplicate"
BOT: Final = "bot"
TEST_USER: Final = "test_user"

# Contract versions this generator can write (each shape is built below), and the default mix.
WRITABLE_VERSIONS: Final[tuple[int, ...]] = (1, 2)
DEFAULT_MIX: Final[dict[int, float]] = {SCHEMA_VERSION: 1.0}
# App builds a v2 client reports (each user keeps one: see `v2_fields`).
APP_VERSIONS: Final[tuple[str, ...]] = ("4.12.0", "4.12.1", "4.13.0", "5.0.0-beta.2", "2025.11.3")

SITE_ORIGIN: Final = "https://shop.example.com"
# Site sections and their path prefixes (the lake may derive a page section from these).
SITE_SECTIONS: Final[dict[str, str]] = {
    "home": "/",
    "category": "/c/",
    "product": "/p/",
    "search": "/search",
    "cart": "/cart",
    "checkout": "/checkout",
    "account": "/account/",
}

# Real user agents by device class, current as of late 2024.
DESKTOP_UAS: Final[tuple[str, ...]] = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0",
)
MOBILE_UAS: Final[tuple[str, ...]] = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.6778.81 Mobile Safari/537.36",
)
TABLET_UAS: Final[tuple[str, ...]] = (
    "Mozilla/5.0 (iPad; CPU OS 17_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Silk/131.4.1 like Chrome/131.0.6778.85 Safari/537.36",
)
CRAWLER_UAS: Final[tuple[str, ...]] = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.6778.69 Mobile Safari/537.36 "
    "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
    "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/131.0.0.0 Safari/537.36",
    "python-requests/2.32.3",
    "curl/8.5.0",
)
DEVICE_UAS: Final[dict[str, tuple[str, ...]]] = {
    "mobile": MOBILE_UAS,
    "desktop": DESKTOP_UAS,
    "tablet": TABLET_UAS,
}
DEVICE_WEIGHTS: Final[dict[str, float]] = {"mobile": 0.55, "desktop": 0.38, "tablet": 0.07}

# Country: (Faker locale, currency, UTC offset in minutes ignoring DST, weight).
COUNTRIES: Final[dict[str, tuple[str, str, int, float]]] = {
    "US": ("en_US", "USD", -300, 0.30),
    "GB": ("en_GB", "GBP", 0, 0.10),
    "DE": ("de_DE", "EUR", 60, 0.10),
    "FR": ("fr_FR", "EUR", 60, 0.07),
    "ES": ("es_ES", "EUR", 60, 0.04),
    "IT": ("it_IT", "EUR", 60, 0.04),
    "NL": ("nl_NL", "EUR", 60, 0.03),
    "SE": ("sv_SE", "SEK", 60, 0.02),
    "CH": ("de_CH", "CHF", 60, 0.02),
    "JP": ("ja_JP", "JPY", 540, 0.06),
    "IN": ("en_IN", "INR", 330, 0.08),
    "BR": ("pt_BR", "BRL", -180, 0.05),
    "CA": ("en_CA", "CAD", -300, 0.05),
    "AU": ("en_AU", "AUD", 600, 0.04),
}
# Units of each currency per US dollar, and its minor-unit digits.
FX_PER_USD: Final[dict[str, tuple[float, int]]] = {
    "USD": (1.0, 2),
    "EUR": (0.92, 2),
    "GBP": (0.79, 2),
    "JPY": (150.0, 0),
    "CAD": (1.37, 2),
    "AUD": (1.52, 2),
    "BRL": (5.6, 2),
    "INR": (83.0, 2),
    "CHF": (0.88, 2),
    "SEK": (10.6, 2),
}
# Catalog categories: (nouns, low and high USD price). High * max FX stays under the price bound.
CATALOG: Final[dict[str, tuple[tuple[str, ...], float, float]]] = {
    "electronics": (
        ("headphones", "charger", "speaker", "monitor", "keyboard", "webcam"),
        9.0,
        600.0,
    ),
    "books": (("novel", "cookbook", "atlas", "biography", "notebook"), 4.0, 60.0),
    "home-garden": (("lamp", "planter", "kettle", "rug", "blender", "toolset"), 8.0, 350.0),
    "fashion": (("sneakers", "jacket", "t-shirt", "backpack", "scarf", "sunglasses"), 7.0, 250.0),
    "sports": (("yoga-mat", "dumbbells", "tent", "bike-helmet", "water-bottle"), 6.0, 450.0),
    "toys": (("puzzle", "building-set", "plush", "board-game", "drone"), 5.0, 150.0),
    "beauty": (("serum", "shampoo", "perfume", "lipstick", "razor"), 3.0, 120.0),
    "grocery": (("coffee", "olive-oil", "tea", "chocolate", "granola"), 2.0, 40.0),
}
NEWSLETTER_REFERRER: Final = "https://mail.google.com/"
EXTERNAL_REFERRERS: Final[tuple[tuple[str | None, float], ...]] = (
    ("https://www.google.com/", 0.42),
    (None, 0.25),
    ("https://www.bing.com/", 0.06),
    ("https://duckduckgo.com/", 0.03),
    ("https://www.facebook.com/", 0.06),
    ("https://www.instagram.com/", 0.04),
    ("https://t.co/", 0.03),
    (NEWSLETTER_REFERRER, 0.05),
    ("https://www.reddit.com/", 0.03),
    ("https://news.ycombinator.com/", 0.03),
)
CAMPAIGNS: Final[tuple[str, ...]] = ("black-friday", "winter-sale", "new-arrivals", "weekly-digest")
CLICK_ELEMENTS: Final[tuple[str, ...]] = (
    "nav-menu",
    "nav-logo",
    "banner-hero",
    "product-card",
    "filter-price",
    "sort-dropdown",
    "add-to-wishlist",
    "size-guide",
    "newsletter-signup",
    "footer-help",
)
LOGIN_METHODS: Final[tuple[str, ...]] = ("password", "password", "google", "apple", "facebook")
SIGNUP_METHODS: Final[tuple[str, ...]] = ("email", "email", "google", "apple")

# Session flow: state -> (action, weight). Weights give a funnel of roughly 10 % add-to-cart per
# product view, 40 % checkout per cart, 60 % purchase per checkout, and a 20-30 % exit per step.
FLOW: Final[dict[str, tuple[tuple[str, float], ...]]] = {
    "start": (("home", 0.35), ("product", 0.35), ("category", 0.20), ("search", 0.10)),
    "home": (
        ("category", 0.30),
        ("product", 0.15),
        ("search", 0.20),
        ("click", 0.10),
        ("login", 0.06),
        ("signup", 0.02),
        ("logout", 0.02),
        ("end", 0.15),
    ),
    "category": (
        ("product", 0.45),
        ("category", 0.10),
        ("search", 0.08),
        ("click", 0.12),
        ("home", 0.05),
        ("end", 0.20),
    ),
    "product": (
        ("product", 0.22),
        ("add_to_cart", 0.12),
        ("category", 0.12),
        ("search", 0.08),
        ("click", 0.14),
        ("end", 0.32),
    ),
    "search": (
        ("product", 0.45),
        ("search", 0.15),
        ("click", 0.05),
        ("category", 0.05),
        ("end", 0.30),
    ),
    "cart": (
        ("begin_checkout", 0.40),
        ("product", 0.20),
        ("remove_from_cart", 0.06),
        ("category", 0.06),
        ("end", 0.28),
    ),
    "checkout": (("purchase", 0.60), ("cart_view", 0.10), ("end", 0.30)),
    "purchased": (("home", 0.15), ("logout", 0.10), ("product", 0.10), ("end", 0.65)),
    "account": (
        ("home", 0.35),
        ("category", 0.20),
        ("product", 0.15),
        ("search", 0.10),
        ("end", 0.20),
    ),
    "bot": (("product", 0.55), ("category", 0.30), ("home", 0.05), ("end", 0.10)),
}

_MARK: Final = "@@DEFECT@@"
_MARK_STR: Final = b'"' + _MARK.encode() + b'"'
_TS_CACHE_LIMIT: Final = 200_000


class Record(NamedTuple):
    """One Kafka record to send and the verdict a correct pipeline must reach for it."""

    key: bytes
    value: bytes | None
    verdict: str
    event_id: str | None


@dataclass(frozen=True, slots=True)
class User:
    """A visitor with a stable country, device, user agent and clock format."""

    user_id: str
    key: bytes
    verdict: str
    country: str
    locale: str
    currency: str
    device: str
    user_agent: str
    ip: str
    offset_seconds: int
    offset_suffix: str
    micros: bool
    base_url: str
    tail: str  # the JSON text of user_agent, ip and country, for the fast path
    v2_extra: str  # the JSON text of a v2 event's app_version and consent (either may be absent)


@dataclass(frozen=True, slots=True)
class Product:
    """A catalog item; prices are pre-converted to every currency."""

    product_id: str
    category: str
    path: str
    prices: dict[str, float | int]


@dataclass(slots=True)
class Session:
    """One visit: where the user is, what is in the cart, and whether they are logged in."""

    user: User
    session_id: str
    ids: str  # the JSON text of user_id and session_id, for the fast path
    state: str
    page_url: str = ""
    referrer: str | None = None
    product: Product | None = None
    cart: list[tuple[Product, int]] = field(default_factory=list)
    logged_in: bool = False


@dataclass(frozen=True, slots=True)
class Pools:
    """Everything Faker builds once per seed."""

    users: tuple[User, ...]
    products: tuple[Product, ...]
    by_category: dict[str, tuple[Product, ...]]
    queries: dict[str, tuple[str, ...]]
    search_paths: dict[str, tuple[str, ...]]


def _cum(weights: list[float]) -> list[float]:
    """Cumulative weights normalised to end exactly at 1.0, for `bisect` on `random()`."""
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    cum = [c / total for c in out]
    cum[-1] = 1.0
    return cum


_FLOW_CUM: Final = {s: (_cum([w for _, w in t]), tuple(a for a, _ in t)) for s, t in FLOW.items()}
_REF_CUM: Final = _cum([w for _, w in EXTERNAL_REFERRERS])
_COUNTRY_CUM: Final = _cum([c[3] for c in COUNTRIES.values()])
_DEVICE_CUM: Final = _cum(list(DEVICE_WEIGHTS.values()))
_CATEGORIES: Final = tuple(CATALOG)
_REFERRERS: Final = tuple(r for r, _ in EXTERNAL_REFERRERS)


def _offset_suffix(minutes: int) -> str:
    """ISO-8601 zone designator for a UTC offset."""
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def _slug(text: str) -> str:
    """Lower-case ASCII slug for URL paths."""
    keep = "".join(ch if ch.isascii() and ch.isalnum() else "-" for ch in text.lower())
    return "-".join(part for part in keep.split("-") if part) or "item"


def _price(usd: float, currency: str) -> float | int:
    rate, digits = FX_PER_USD[currency]
    value = usd * rate
    if digits == 0:
        return int(round(value, -1)) or 10
    return round(math.floor(value) + 0.99, 2) if value > 5 else round(value, 2)


def build_pools(seed: int, users: int = 5_000, products: int = 2_000) -> Pools:
    """Builds users, catalog and search terms with Faker; the only place Faker is called."""
    _check_user_agents()
    locales = sorted({c[0] for c in COUNTRIES.values()})
    fake = Faker(locales)
    fake.seed_instance(seed)
    rng = random.Random(f"pools-{seed}")  # noqa: S311 - reproducible data, not secrets
    catalog = _build_products(fake["en_US"], rng, products)
    by_category = {cat: tuple(p for p in catalog if p.category == cat) for cat in CATALOG}
    queries = {loc: _build_queries(fake[loc], rng, catalog) for loc in locales}
    search_paths = {
        loc: tuple(_json_safe(f"/search?q={urllib.parse.quote_plus(q)}") for q in qs)
        for loc, qs in queries.items()
    }
    people = tuple(_build_user(fake, rng, i) for i in range(users))
    return Pools(people, catalog, by_category, queries, search_paths)


def _check_user_agents() -> None:
    """Crawler UAs must match the contract's bot rule and browser UAs must not, or verdicts lie."""
    for ua in CRAWLER_UAS:
        if not BOT_UA_RE.search(ua):
            raise ValueError(f"crawler user agent does not match BOT_UA_PATTERN: {ua}")
    for uas in DEVICE_UAS.values():
        for ua in uas:
            if BOT_UA_RE.search(ua):
                raise ValueError(f"browser user agent matches BOT_UA_PATTERN: {ua}")


def _build_products(fake: Faker, rng: random.Random, count: int) -> tuple[Product, ...]:
    categories = list(CATALOG)
    out = []
    for i in range(count):
        cat = categories[i % len(categories)]
        nouns, low, high = CATALOG[cat]
        brand = _slug(fake.last_name())
        name = f"{brand}-{fake.word()}-{rng.choice(nouns)}"
        usd = min(high, math.exp(rng.uniform(math.log(low), math.log(high))))
        pid = f"prod_{rng.randrange(10**7):07d}"
        prices = {cur: _price(usd, cur) for cur in CURRENCIES}
        out.append(Product(pid, cat, _json_safe(f"/p/{_slug(name)}-{pid[5:]}"), prices))
    return tuple(out)


def _build_queries(
    fake: Faker, rng: random.Random, catalog: tuple[Product, ...]
) -> tuple[str, ...]:
    """Search terms in the user's language: local words, brands and product nouns, some typos."""
    out = []
    for _ in range(120):
        kind = rng.random()
        noun = rng.choice(CATALOG[rng.choice(list(CATALOG))][0]).replace("-", " ")
        if kind < 0.35:
            text = noun
        elif kind < 0.6:
            text = f"{fake.word()} {noun}"
        elif kind < 0.8:
            text = f"{fake.last_name()} {noun}"
        elif kind < 0.9:
            text = rng.choice(catalog).path[3:].split("-")[0]
        else:
            cut = rng.randrange(1, len(noun))
            text = noun[:cut] + noun[cut + 1 :]
        out.append(text)
    return tuple(out)


def _pick(rng: random.Random, cum: list[float], items: tuple[Any, ...] | list[Any]) -> Any:
    return items[bisect(cum, rng.random())]


def _build_user(fake: Faker, rng: random.Random, index: int) -> User:
    country = _pick(rng, _COUNTRY_CUM, list(COUNTRIES))
    locale, currency, offset_min, _ = COUNTRIES[country]
    kind = rng.random()
    if kind < 0.02:
        verdict, device, ua = BOT, "bot", rng.choice(CRAWLER_UAS)
        user_id = f"crawler_{index:05d}"
    else:
        device = _pick(rng, _DEVICE_CUM, list(DEVICE_WEIGHTS))
        ua = rng.choice(DEVICE_UAS[device])
        verdict = TEST_USER if kind < 0.03 else GOOD
        prefix = TEST_USER_PREFIX if verdict == TEST_USER else "user_"
        user_id = f"{prefix}{rng.randrange(10**6, 10**7)}{index:05d}"
    # Browsers send UTC millis (JS toISOString); some clients use the local offset, some backends
    # micros with "Z" or "+00:00".
    style = rng.random()
    if style < 0.15:
        suffix = _offset_suffix(offset_min)
    else:
        offset_min = 0
        suffix = "+00:00" if style < 0.3 else "Z"
    ip = fake.ipv6() if rng.random() < 0.15 else fake.ipv4_public()
    base = "" if rng.random() < 0.1 else SITE_ORIGIN  # single-page apps often send the path only
    tail = {"user_agent": ua, "ip": ip, "country": country}
    return User(
        user_id=_json_safe(user_id),
        key=user_id.encode(),
        verdict=verdict,
        country=country,
        locale=locale,
        currency=currency,
        device=device,
        user_agent=ua,
        ip=ip,
        offset_seconds=offset_min * 60,
        offset_suffix=suffix,
        micros=0.15 <= style < 0.45,
        base_url=base,
        tail=orjson.dumps(tail).decode()[1:-1],
        v2_extra=orjson.dumps(v2_fields(user_id)).decode()[1:-1],
    )


def v2_fields(user_id: str) -> dict[str, Any]:
    """A v2 client's app_version and consent, the same for every event of a user.

    Derived from the user id (CRC-32), not drawn: the pools' RNG stream stays as it was.
    """
    bits = zlib.crc32(user_id.encode())
    fields: dict[str, Any] = {}
    if bits % 8:  # some clients do not report their build
        fields["app_version"] = APP_VERSIONS[(bits >> 3) % len(APP_VERSIONS)]
    if (bits >> 8) % 5:  # some users never answered the consent banner
        fields["consent"] = {"analytics": bool(bits >> 11 & 1), "marketing": bool(bits >> 12 & 3)}
    return fields


def parse_schema_mix(text: str) -> dict[int, float]:
    """`1:0.5,2:0.5` as {version: share}; a ValueError in one line says what is wrong.

    Shares must add up to 1 (to within 1e-9) so that a mix means what it says.
    """
    mix: dict[int, float] = {}
    for part in text.split(","):
        version_text, sep, share_text = part.strip().partition(":")
        try:
            version, share = int(version_text), float(share_text)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not VERSION:SHARE (e.g. 1:0.5,2:0.5)") from None
        if not sep or version in mix:
            raise ValueError(f"{part.strip()!r}: one VERSION:SHARE per version")
        mix[version] = share
    check_schema_mix(mix)
    return mix


def check_schema_mix(mix: dict[int, float]) -> None:
    """Every version writable and known to the contract, every share in [0, 1], total 1."""
    for version, share in mix.items():
        if version not in WRITABLE_VERSIONS or not CONTRACT.knows(version):
            writable = ", ".join(map(str, WRITABLE_VERSIONS))
            raise ValueError(
                f"schema version {version} cannot be produced (the generator writes {writable})"
            )
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share {share} of version {version} must be between 0 and 1")
    total = sum(mix.values())
    if not mix or abs(total - 1.0) > 1e-9:
        raise ValueError(f"the shares must add up to 1, not {total:g}")


def _json_safe(text: str) -> str:
    """Checks a pool string needs no JSON escaping, so the fast path may paste it between quotes."""
    if not text.isascii() or any(ch in text for ch in '"\\') or not text.isprintable():
        raise ValueError(f"pool string {text!r} would need JSON escaping")
    return text


def uuid4_from(rng: random.Random) -> str:
    """A version-4 UUID string from our seeded RNG (uuid.uuid4 would read the OS entropy)."""
    n = rng.getrandbits(128)
    n = (n & ~(0xF000 << 64) & ~(0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class EventGenerator:
    """Deterministic stream of `Record`s: sessions of realistic events, plus bad and duplicate ones.

    The same seed and the same `now` values give byte-identical output; a different `now` changes
    only the timestamps, because no random draw depends on the clock.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        bad_ratio: float = 0.0,
        duplicate_ratio: float = 0.0,
        late_ratio: float = 0.0,
        clock: Callable[[], float] = time.time,
        users: int = 5_000,
        products: int = 2_000,
        concurrent_sessions: int = 256,
        schema_mix: dict[int, float] | None = None,
        stream: int = 0,
        pools: Pools | None = None,
    ) -> None:
        ratios = {"bad": bad_ratio, "duplicate": duplicate_ratio, "late": late_ratio}
        for name, ratio in ratios.items():
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"{name} ratio {ratio} must be between 0 and 1")
        if bad_ratio + duplicate_ratio > 1.0:
            raise ValueError("bad ratio + duplicate ratio must be at most 1")
        self.bad_ratio = bad_ratio
        self.duplicate_ratio = duplicate_ratio
        self.late_ratio = late_ratio
        self._clock = clock
        if stream < 0:
            raise ValueError(f"stream {stream} must be >= 0")
        # Stream 0 keeps the seed's historical stream byte for byte; others get RNGs of their own.
        tag = "" if stream == 0 else f"-stream-{stream}"
        self._rng = random.Random(seed if stream == 0 else f"{seed}{tag}")  # noqa: S311
        self._pools = build_pools(seed, users, products) if pools is None else pools
        self._sessions = [self._new_session() for _ in range(concurrent_sessions)]
        self._recent: deque[Record] = deque(maxlen=512)
        self._ts_cache: dict[int, str] = {}
        self._defects = _Defects(self)
        mix = dict(DEFAULT_MIX if schema_mix is None else schema_mix)
        check_schema_mix(mix)
        self.schema_mix = mix
        self._versions = tuple(mix)
        self._version_cum = _cum(list(mix.values())) if len(mix) > 1 else []
        self._version_rng = random.Random(f"versions-{seed}{tag}")  # noqa: S311 - not secrets

    # -- public API -------------------------------------------------------------------------------

    def batch(self, n: int, now: float | None = None) -> list[Record]:
        """`n` records stamped around `now` (epoch seconds; defaults to the injected clock)."""
        now = self._clock() if now is None else now
        step = self.next_record
        return [step(now) for _ in range(n)]

    def records(self, n: int, now: float | None = None) -> Iterator[Record]:
        """Lazily yields `n` records, reading the clock per record unless `now` is given."""
        for _ in range(n):
            yield self.next_record(self._clock() if now is None else now)

    def next_record(self, now: float) -> Record:
        """One record: bad with `bad_ratio`, an earlier good one re-sent with `duplicate_ratio`."""
        rng = self._rng
        r = rng.random()
        if r < self.bad_ratio:
            return self._bad_record(now)
        if r < self.bad_ratio + self.duplicate_ratio and self._recent:
            original = self._recent[int(rng.random() * len(self._recent))]
            return original._replace(verdict=DUPLICATE)
        session, event_type, props = self._step()
        user = session.user
        event_id = uuid4_from(rng)
        ts = self._timestamp(now, user)
        version = self._next_version()
        ref = "" if session.referrer is None else f',"referrer":"{session.referrer}"'
        url_key = "page_url" if version == 1 else "url"
        extra = f",{user.v2_extra}" if version > 1 and user.v2_extra else ""
        # Same bytes as orjson.dumps(event_dict(...)): pool strings are checked JSON-safe up front.
        text = (
            f'{{"event_id":"{event_id}","event_type":"{event_type}","timestamp":"{ts}",'
            f'{session.ids},"{url_key}":"{session.page_url}"{ref},{user.tail},'
            f'"schema_version":{version}{extra}'
        )
        if props:
            value = b"".join((text.encode(), b',"properties":', orjson.dumps(props), b"}"))
        else:
            value = (text + "}").encode()
        rec = Record(user.key, value, user.verdict, event_id)
        if user.verdict == GOOD:
            self._recent.append(rec)
        return rec

    def event_dict(self, now: float) -> tuple[Session, dict[str, Any]]:
        """The next event as a dict (the slow path, for defects and for tests of the fast path)."""
        session, event_type, props = self._step()
        user = session.user
        event_id = uuid4_from(self._rng)
        timestamp = self._timestamp(now, user)
        version = self._next_version()
        event: dict[str, Any] = {
            "event_id": event_id,
            "event_type": event_type,
            "timestamp": timestamp,
            "user_id": user.user_id,
            "session_id": session.session_id,
            "page_url" if version == 1 else "url": session.page_url,
        }
        if session.referrer is not None:
            event["referrer"] = session.referrer
        event["user_agent"] = user.user_agent
        event["ip"] = user.ip
        event["country"] = user.country
        event["schema_version"] = version
        if version > 1:
            event.update(v2_fields(user.user_id))
        if props:
            event["properties"] = props
        return session, event

    def _next_version(self) -> int:
        """The next event's contract version: the mix's only one, or a draw of its own RNG."""
        if not self._version_cum:
            return self._versions[0]
        return self._versions[bisect(self._version_cum, self._version_rng.random())]

    def _bad_record(self, now: float) -> Record:
        session, event = self.event_dict(now)
        category = BAD_CATEGORIES[int(self._rng.random() * len(BAD_CATEGORIES))]
        value, event_id = self._defects.apply(category, event, now)
        return Record(session.user.key, value, bad_verdict(category), event_id)

    # -- sessions ---------------------------------------------------------------------------------

    def _new_session(self) -> Session:
        rng = self._rng
        user = self._pools.users[int(rng.random() * len(self._pools.users))]
        session_id = f"sess_{rng.getrandbits(64):016x}"
        ids = f'"user_id":"{user.user_id}","session_id":"{session_id}"'
        return Session(user, session_id, ids, "bot" if user.verdict == BOT else "start")

    def _step(self) -> tuple[Session, str, dict[str, Any] | None]:
        """Advances a random active session by one action; an ended session is replaced."""
        rng = self._rng
        slot = int(rng.random() * len(self._sessions))
        session = self._sessions[slot]
        cum, actions = _FLOW_CUM[session.state]
        action = actions[bisect(cum, rng.random())]
        if action == "end":
            session = self._sessions[slot] = self._new_session()
            cum, actions = _FLOW_CUM[session.state]
            action = actions[bisect(cum, rng.random())]
        event_type, props = self._act(session, action)
        return session, event_type, props

    def _goto(self, session: Session, path: str) -> None:
        """A page view: the previous page becomes the referrer (an external one on landing)."""
        if session.page_url:
            session.referrer = session.page_url
        else:
            ref = _pick(self._rng, _REF_CUM, _REFERRERS)
            session.referrer = None if session.user.verdict == BOT else ref
            if session.referrer == NEWSLETTER_REFERRER:
                campaign = CAMPAIGNS[int(self._rng.random() * len(CAMPAIGNS))]
                sep = "&" if "?" in path else "?"
                path = f"{path}{sep}utm_source=newsletter&utm_medium=email&utm_campaign={campaign}"
        session.page_url = session.user.base_url + path

    def _act(self, session: Session, action: str) -> tuple[str, dict[str, Any] | None]:
        """Performs one flow action; returns the event type and its properties."""
        rng = self._rng
        user = session.user
        pools = self._pools
        if action == "product":
            p = pools.products[int(rng.random() * len(pools.products))]
            if session.product is not None and rng.random() < 0.5:
                same = pools.by_category[session.product.category]
                p = same[int(rng.random() * len(same))]
            session.product = p
            self._goto(session, p.path)
            session.state = "bot" if user.verdict == BOT else "product"
            return "page_view", self._product_props(p, user)
        if action == "category":
            cat = _CATEGORIES[int(rng.random() * len(_CATEGORIES))]
            self._goto(session, f"{SITE_SECTIONS['category']}{cat}")
            session.state = "bot" if user.verdict == BOT else "category"
            return "page_view", {"category": cat}
        if action == "home":
            self._goto(session, SITE_SECTIONS["home"])
            session.state = "bot" if user.verdict == BOT else "home"
            return "page_view", None
        if action == "search":
            paths = pools.search_paths[user.locale]
            i = int(rng.random() * len(paths))
            self._goto(session, paths[i])
            session.state = "search"
            results = 0 if rng.random() < 0.08 else min(int(rng.paretovariate(1.2) * 12), 5_000)
            return "search", {"query": pools.queries[user.locale][i], "results_count": results}
        if action == "click":
            element = CLICK_ELEMENTS[int(rng.random() * len(CLICK_ELEMENTS))]
            return "click", {"element_id": element}
        return self._act_commerce(session, action)

    def _act_commerce(self, session: Session, action: str) -> tuple[str, dict[str, Any] | None]:
        """Cart, checkout and account actions; one that does not apply becomes a home page view."""
        rng = self._rng
        user = session.user
        if action == "add_to_cart" and session.product is not None:
            qty = 1 if rng.random() < 0.8 else 2 + int(rng.random() * 3)
            if len(session.cart) < 8:
                session.cart.append((session.product, qty))
            session.state = "cart"
            return "add_to_cart", {**self._product_props(session.product, user), "quantity": qty}
        if action == "remove_from_cart" and session.cart:
            p, qty = session.cart.pop(int(rng.random() * len(session.cart)))
            self._goto(session, SITE_SECTIONS["cart"])
            session.state = "cart" if session.cart else "category"
            return "remove_from_cart", {**self._product_props(p, user), "quantity": qty}
        if action == "cart_view":
            self._goto(session, SITE_SECTIONS["cart"])
            session.state = "cart"
            return "page_view", None
        if action == "begin_checkout" and session.cart:
            self._goto(session, SITE_SECTIONS["checkout"])
            session.state = "checkout"
            return "begin_checkout", self._cart_props(session)
        if action == "purchase" and session.cart:
            self._goto(session, f"{SITE_SECTIONS['checkout']}/confirmation")
            props = {"order_id": f"ord_{rng.getrandbits(48):012x}", **self._cart_props(session)}
            session.cart.clear()
            session.state = "purchased"
            return "purchase", props
        if action in ("login", "signup") and not session.logged_in:
            self._goto(session, f"{SITE_SECTIONS['account']}{action}")
            session.logged_in = True
            session.state = "account"
            methods = LOGIN_METHODS if action == "login" else SIGNUP_METHODS
            return action, {"method": methods[int(rng.random() * len(methods))]}
        if action == "logout" and session.logged_in:
            self._goto(session, f"{SITE_SECTIONS['account']}logout")
            session.logged_in = False
            session.state = "home"
            return "logout", None
        return self._act(session, "home")

    @staticmethod
    def _product_props(p: Product, user: User) -> dict[str, Any]:
        return {
            "product_id": p.product_id,
            "category": p.category,
            "price": p.prices[user.currency],
            "currency": user.currency,
        }

    @staticmethod
    def _cart_props(session: Session) -> dict[str, Any]:
        cur = session.user.currency
        total = sum(p.prices[cur] * q for p, q in session.cart)
        digits = FX_PER_USD[cur][1]
        revenue = round(total, digits) if digits else int(total)
        return {"revenue": revenue, "currency": cur, "quantity": sum(q for _, q in session.cart)}

    # -- time -------------------------------------------------------------------------------------

    def _event_time(self, now: float) -> float:
        """`now` minus client jitter, or minutes to hours late; some late ones cross UTC midnight.

        The draws depend on `late_ratio` but never on `now`, so the clock cannot shift the stream.
        """
        rng = self._rng
        if rng.random() >= self.late_ratio:
            return now + 0.25 - rng.random() * 2.0
        a, b = rng.random(), rng.random()
        if b < 0.25:  # yesterday, UTC, in the last three hours before midnight
            return math.floor(now / 86_400) * 86_400 - 1 - a * 3 * 3_600
        if a < 0.9:  # minutes: a typical offline-queue delay
            return now - 60 - min(rng.expovariate(1 / 1_800), 36 * 3_600)
        return now - 3_600 - a * 30 * 3_600  # hours

    def _timestamp(self, now: float, user: User) -> str:
        t = self._event_time(now) + user.offset_seconds
        sec = math.floor(t)
        base = self._ts_cache.get(sec)
        if base is None:
            if len(self._ts_cache) > _TS_CACHE_LIMIT:
                self._ts_cache.clear()
            base = self._ts_cache[sec] = time.strftime(UTC_SECONDS_FORMAT, time.gmtime(sec))
        if user.micros:
            return f"{base}.{int((t - sec) * 1_000_000):06d}{user.offset_suffix}"
        return f"{base}.{int((t - sec) * 1_000):03d}{user.offset_suffix}"

    @property
    def rng(self) -> random.Random:
        """The generator's RNG, shared with the defect injector so one seed drives everything."""
        return self._rng

    @property
    def pools(self) -> Pools:
        """Users, products and search terms built for this seed."""
        return self._pools


def iso_utc(t: float) -> str:
    """ISO-8601 UTC with millis and `Z`."""
    sec = math.floor(t)
    return f"{time.strftime(UTC_SECONDS_FORMAT, time.gmtime(sec))}.{int((t - sec) * 1000):03d}Z"


class _Defects:
    """Turns a valid event into a record with exactly one defect of a given error category.

    Returns the payload bytes and the event_id a reader could recover: the id for validate-stage
    defects that leave `event_id` intact; None for parse-stage defects and when `event_id` is the
    defect.
    """

    def __init__(self, gen: EventGenerator) -> None:
        self._gen = gen
        self._rng = gen.rng

    def apply(
        self, category: str, event: dict[str, Any], now: float
    ) -> tuple[bytes | None, str | None]:
        value, touched_id = getattr(self, category)(event, now)
        if category in PARSE_CATEGORIES or touched_id:
            return value, None
        return value, event["event_id"]

    def _choice(self, items: tuple[Any, ...] | list[Any]) -> Any:
        return items[self._rng.randrange(len(items))]

    @staticmethod
    def _key(event: dict[str, Any], name: str) -> str:
        """The key that carries field `name` in this event (a v2 event carries page_url as url)."""
        return "url" if name == "page_url" and "url" in event else name

    def _with_product(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event's properties, with product fields added when it has none (still valid)."""
        props = dict(event.get("properties") or {})
        if "price" not in props:
            pools = self._gen.pools
            p = pools.products[self._rng.randrange(len(pools.products))]
            cur = self._choice(CURRENCIES)
            props.update(
                product_id=p.product_id, category=p.category, price=p.prices[cur], currency=cur
            )
        props.setdefault("quantity", 1)
        event["properties"] = props
        return props

    @staticmethod
    def _splice(event: dict[str, Any], raw: bytes) -> bytes:
        """Serialises `event` and swaps the marker string (with its quotes) for raw JSON text."""
        return orjson.dumps(event).replace(_MARK_STR, raw, 1)

    # -- parse stage ------------------------------------------------------------------------------

    def null_value(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        return None, True

    def too_large(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        rng = self._rng
        if rng.random() < 0.5:
            props = dict(event.get("properties") or {})
            for i in range(MAX_KEYS + 1 + rng.randrange(MAX_KEYS)):
                props[f"attr_{i}"] = i
            event["properties"] = props
            return orjson.dumps(event), True
        body = orjson.dumps(event)
        size = MAX_MESSAGE_BYTES + 1 if rng.random() < 0.3 else rng.randint(65_537, 70 * 1024)
        return b"{" + b" " * (size - len(body)) + body[1:], True

    def invalid_utf8(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        variant = self._rng.randrange(6)
        if variant == 0:
            return b"\xef\xbb\xbf" + orjson.dumps(event), True
        props = dict(event.get("properties") or {})
        props["query"] = _MARK
        event["properties"] = props
        raw = (
            b'"caf\xe9 cr\xe8me"',  # latin-1
            b'"bad \xff\xfe byte"',
            b'"cut \xe2\x82"',  # truncated 3-byte sequence
            b'"cesu \xed\xa0\x80"',  # UTF-8-encoded surrogate
            b'"overlong \xc0\xaf"',
        )[variant - 1]
        return self._splice(event, raw), True

    def invalid_json(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        body = orjson.dumps(event)
        variant = self._rng.randrange(6)
        if variant == 0:  # truncated, cut on a character boundary so it stays valid UTF-8
            cut = self._rng.randrange(1, len(body) - 1)
            while 0x80 <= body[cut] < 0xC0:
                cut -= 1
            return body[:cut], True
        return (
            b"",
            body + b"}",
            body + b"\n" + orjson.dumps({**event, "event_id": uuid4_from(self._rng)}),
            body[:-1] + b",}",
            body.replace(b'"event_type":', b"event_type:", 1),
        )[variant - 1], True

    def invalid_unicode(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        escape = self._choice((rb"\ud800", rb"\udfff", rb"\udc00", rb"\ud83d"))
        if self._rng.random() < 0.5:
            ua = orjson.dumps(event["user_agent"])
            event["user_agent"] = _MARK
            return self._splice(event, ua[:-1] + escape + b'"'), True
        props = dict(event.get("properties") or {})
        props["query"] = _MARK
        event["properties"] = props
        return self._splice(event, b'"shoes ' + escape + b' red"'), True

    def non_finite(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        props = self._with_product(event)
        props["price"] = _MARK
        return self._splice(
            event, self._choice((b"NaN", b"Infinity", b"-Infinity", b"1e400"))
        ), True

    def duplicate_key(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        rng = self._rng
        if rng.random() < 0.5:  # a top-level key again, with the same or another valid value
            key = self._key(event, self._choice(REQUIRED_FIELDS[1:]))
            value = event[key]
            if key == "event_type" and rng.random() < 0.5:
                value = self._choice(EVENT_TYPES)
            dup = b',"' + key.encode() + b'":' + orjson.dumps(value) + b"}"
            return orjson.dumps(event)[:-1] + dup, True
        props = self._with_product(event)
        key = self._choice(list(props))
        props[_MARK] = 0
        raw = orjson.dumps(key) + b":" + orjson.dumps(props[key])
        return orjson.dumps(event).replace(_MARK_STR + b":0", raw, 1), True

    def too_deep(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        depth = self._choice((MAX_DEPTH, MAX_DEPTH + 4, 64, 1_000))
        props = dict(event.get("properties") or {})
        props["attributes"] = _MARK
        event["properties"] = props
        if self._rng.random() < 0.5:
            return self._splice(event, b"[" * depth + b"]" * depth), True
        return self._splice(event, b'{"a":' * depth + b"{}" + b"}" * depth), True

    def not_object(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        body = orjson.dumps(event)
        return self._choice(
            (b"[" + body + b"]", orjson.dumps(body.decode()), b"42", b"null", b"true", b"[]")
        ), True

    # -- validate stage ---------------------------------------------------------------------------

    def missing_field(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        key = self._key(event, self._choice(REQUIRED_FIELDS))
        del event[key]
        return orjson.dumps(event), key == "event_id"

    def empty_field(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        key = self._key(event, self._choice(REQUIRED_FIELDS))
        event[key] = self._choice(("", None, "   "))
        return orjson.dumps(event), key == "event_id"

    def wrong_type(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        variant = self._rng.randrange(9)
        if variant < 4:
            props = self._with_product(event)
            field_, value = (
                ("quantity", str(props["quantity"])),
                ("quantity", True),
                ("price", str(props["price"])),
                ("currency", 840),
            )[variant]
            props[field_] = value
        elif variant == 4:
            event["user_id"] = int("".join(ch for ch in event["user_id"] if ch.isdigit()) or "456")
        elif variant == 5:
            event["session_id"] = self._rng.randrange(1, 10**9)
        elif variant == 6:
            event["schema_version"] = self._choice((True, str(SCHEMA_VERSION)))
        elif variant == 7:
            event["properties"] = self._choice(([], "product_id=42"))
        elif variant == 8 and "url" in event:  # a v2 event: consent answers are booleans
            event["consent"] = {"analytics": self._choice(("yes", 1)), "marketing": False}
        else:
            event["event_type"] = self._choice((1, ["page_view"]))
        return orjson.dumps(event), False

    def invalid_format(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        variant = self._rng.randrange(4)
        if variant == 0:
            event["event_id"] = self._choice(
                ("12345", "not-a-uuid", event["event_id"] + "0", "{" + event["event_id"] + "}")
            )
            return orjson.dumps(event), True
        if variant == 1:
            event[self._key(event, "page_url")] = self._choice(
                (
                    "javascript:alert(1)",
                    "shop.example.com/p/x",
                    "/search?q=red shoes",
                    "p/index.html",
                )
            )
        elif variant == 2:
            event["country"] = self._choice(("USA", "1A", "D", "Deutschland"))
        else:
            key = self._choice(("user_id", "session_id"))
            event[key] = self._choice(_BAD_IDS)
        return orjson.dumps(event), False

    def invalid_value(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        variant = self._rng.randrange(4)
        if variant == 0:
            # Unknown types only: case and whitespace variants are normalised, not rejected.
            event["event_type"] = self._choice(
                ("pageview", "teleport", "checkout_complete", "view")
            )
        elif variant == 1 and "url" not in event:  # (v2 at version 0 would also lack page_url)
            event["schema_version"] = self._choice((0, -1))
        elif variant < 3 and "url" in event:  # a v2 event: url and page_url disagree, or too long
            if self._rng.random() < 0.5:
                event["page_url"] = event["url"] + "x"
            else:
                event["app_version"] = "9." * (TEXT_LIMITS["app_version"] // 2) + "1"
        else:
            props = self._with_product(event)
            field_, value = self._choice(_BAD_VALUES)
            props[field_] = value
        return orjson.dumps(event), False

    def unsupported_schema_version(
        self, event: dict[str, Any], now: float
    ) -> tuple[bytes | None, bool]:
        """An event from a producer newer than this code: held in the DLQ until it knows better."""
        event["schema_version"] = CONTRACT.newest + self._choice((1, 7, 998))
        return orjson.dumps(event), False

    def invalid_timestamp(self, event: dict[str, Any], now: float) -> tuple[bytes | None, bool]:
        iso = iso_utc(now)
        event["timestamp"] = self._choice(
            (
                iso[:-1],  # naive
                iso[:-5].replace("T", " "),  # naive with a space
                iso[:10],  # date only
                int(now * 1000),  # epoch millis
                int(now),  # epoch seconds
                str(int(now)),  # epoch seconds as a string
                time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)),  # RFC 2822
                "yesterday",
                iso[:5] + "13-45T25:61:00Z",  # impossible date and time
            )
        )
        return orjson.dumps(event), False

    def timestamp_out_of_range(
        self, event: dict[str, Any], now: float
    ) -> tuple[bytes | None, bool]:
        event["timestamp"] = self._choice(
            (
                iso_utc(now + 10 * 365.25 * 86_400),
                iso_utc(now + 365 * 86_400),
                iso_utc(now - 400 * 86_400),
                "2001-09-09T01:46:40Z",
                "9999-12-31T23:59:59.999Z",
                "0001-01-01T00:00:00Z",
                "1970-01-01T00:00:00+00:00",
                "2038-01-19T03:14:08Z",
            )
        )
        return orjson.dumps(event), False


# Ids the contract refuses: control and invisible characters (contract.ID_FORBIDDEN_CATEGORIES),
# and length. (Path-like ids such as `../../etc` or `a/b` are valid: no id shapes a path.)
_BAD_IDS: Final[tuple[str, ...]] = (
    "user_\u202e654",  # right-to-left override (Cf)
    "user\u200d456",  # zero-width joiner (Cf)
    "user\u200b456",  # zero-width space (Cf)
    "user\x00456",  # NUL (Cc)
    "user\n456",  # newline (Cc)
    "user\u2028456",  # line separator (Zl)
    "user\ue000",  # private use (Co)
    "u" * (ID_MAX_LENGTH + 172),
)
_BAD_VALUES: Final[tuple[tuple[str, Any], ...]] = (
    ("price", -4.99),
    ("price", NUMERIC_BOUNDS["price"][1] * 1.5),
    ("quantity", 0),
    ("quantity", int(NUMERIC_BOUNDS["quantity"][1]) * 5),
    ("currency", "XYZ"),
    ("currency", "BTC"),
)
