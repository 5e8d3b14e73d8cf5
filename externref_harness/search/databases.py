"""Hypothesis example databases named on the command line: a directory, or `redis://HOST:PORT/DB`.

A directory keeps one machine's campaign; a Redis server lets any number of machines share one
(Hypothesis's `RedisExampleDatabase`, whose keys expire after eight days without use). Opening one
checks it at once, so a bad URL or an unreachable server is one line before a long run, not a
traceback after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from externref_harness.errors import UsageError

#: Where Hypothesis keeps its examples by default, and so where `check` (dev profile) looks.
DEFAULT_DIRECTORY = Path(".hypothesis/examples")
#: How long a Redis call may take before the server counts as unreachable (seconds).
REDIS_TIMEOUT = 3.0


@dataclass(frozen=True)
class OpenedDatabase:
    database: ExampleDatabase
    #: What the user named, for messages and the summary.
    where: str
    is_redis: bool


def open_database(spec: str | None) -> OpenedDatabase:
    """The database `spec` names (a directory by default), checked to be usable now."""
    if spec is None or "://" not in spec:
        directory = Path(spec) if spec else DEFAULT_DIRECTORY
        return OpenedDatabase(open_directory(directory), str(directory), False)
    return OpenedDatabase(open_redis(spec), spec, True)


def open_directory(directory: Path) -> ExampleDatabase:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--database {directory}: {e.strerror or e}") from None
    if not directory.is_dir():
        raise UsageError(f"--database {directory}: not a directory")
    return DirectoryBasedExampleDatabase(str(directory))


def redis_address(url: str) -> tuple[str, int, int, str | None]:
    """(host, port, db, password) of `redis://[:PASSWORD@]HOST:PORT/DB`; anything else is a usage
    error."""
    bad = f"--database {url!r}: expected a directory or redis://HOST:PORT/DB"
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(bad)
    try:
        port = parts.port or 6379
    except ValueError:
        raise UsageError(f"{bad} (bad port)") from None
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise UsageError(f"{bad} (DB must be a number, got {path!r})")
    return parts.hostname, port, int(path), parts.password


def open_redis(url: str) -> ExampleDatabase:
    from hypothesis.extra.redis import RedisExampleDatabase
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.exceptions import AuthenticationError, RedisError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    host, port, db, password = redis_address(url)
    # No retries: a server that went away is reported at once, and the campaign moves on.
    client = Redis(
        host=host,
        port=port,
        db=db,
        password=password,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    shown = url.replace(f":{password}@", ":***@") if password else url
    try:
        client.ping()
    except AuthenticationError as e:
        raise UsageError(f"--database {shown}: Redis refused: {e}") from None
    except RedisConnectionError as e:
        raise UsageError(f"--database {shown}: Redis is unreachable: {e}") from None
    except RedisError as e:
        raise UsageError(f"--database {shown}: Redis refused: {e}") from None
    return RedisExampleDatabase(client)


def database_errors() -> tuple[type[BaseException], ...]:
    """What a database raises when its server goes away mid-run."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)


class RecordingDatabase(ExampleDatabase):
    """Another database, remembering what was saved through it since the last `take_saved()`.

    A campaign finds the same bug again and again; the raw example of a failure already known is
    deleted again (exactly the entries this worker saved), so the database keeps one example per
    distinct failure and a later run does not replay thousands of copies.
    """

    def __init__(self, inner: ExampleDatabase) -> None:
        super().__init__()
        self.inner = inner
        self._saved: list[tuple[bytes, bytes]] = []

    def save(self, key: bytes, value: bytes) -> None:
        # Only what was not there yet: an example another worker stored stays, even when this
        # worker came to the very same one (the same seed) and deletes its own copy.
        new = value not in set(self.inner.fetch(key))
        self.inner.save(key, value)
        if new:
            self._saved.append((key, value))

    def fetch(self, key: bytes) -> Iterable[bytes]:
        return list(self.inner.fetch(key))

    def delete(self, key: bytes, value: bytes) -> None:
        self.inner.delete(key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        new = value not in set(self.inner.fetch(dest))
        self.inner.move(src, dest, value)
        if new:
            self._saved.append((dest, value))

    def take_saved(self) -> list[tuple[bytes, bytes]]:
        saved, self._saved = self._saved, []
        return saved


class KeyedDatabase(ExampleDatabase):
    """Another database, with every key put under `prefix`: one machine's examples apart from
    every other machine's, in any backend."""

    def __init__(self, inner: ExampleDatabase, prefix: bytes) -> None:
        super().__init__()
        self.inner = inner
        self.prefix = prefix + b"/"

    def save(self, key: bytes, value: bytes) -> None:
        self.inner.save(self.prefix + key, value)

    def fetch(self, key: bytes) -> Iterable[bytes]:
        return self.inner.fetch(self.prefix + key)

    def delete(self, key: bytes, value: bytes) -> None:
        self.inner.delete(self.prefix + key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.inner.move(self.prefix + src, self.prefix + dest, value)
