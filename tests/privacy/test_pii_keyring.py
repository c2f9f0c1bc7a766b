"""The PII keyring: after a rotation the new key hashes what arrives, and the retired keys
still verify: an id suppressed under the old key stays suppressed, its erasure requests are
found, and an e-mail hashed before the rotation is found by the erasure's search. The
embedded default rotates its key file with ``personify privacy rotate-pii-key``."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from personify.cli import main
from personify.clock import FrozenClock
from personify.events.hashing import PiiHasher, key_id
from tests.api import running_app
from tests.conftest import make_settings
from tests.privacy.seeding import ANON, START, USER, send, settle

OLD = "old-pii-key-0123456789"
NEW = "new-pii-key-9876543210"


def test_the_active_key_hashes_and_every_key_verifies() -> None:
    old = PiiHasher(OLD.encode(), ["traits.*"])
    rotated = PiiHasher(NEW.encode(), ["traits.*"], retired_keys=[OLD.encode(), NEW.encode()])
    assert rotated.rotated and not old.rotated
    # the active key is not on the ring twice
    assert rotated.key_ids == [key_id(NEW.encode()), key_id(OLD.encode())]
    email = " Ada@Example.COM "
    assert rotated.hash_value("email", email) != old.hash_value("email", email)
    assert rotated.candidates("email", email) == (
        rotated.hash_value("email", email),
        old.hash_value("email", email),
    )
    event = {"traits": {"email": email}}
    rotated.apply(event)
    assert event["traits"]["email"] == rotated.hash_value("email", email)
    # a key id names a key without revealing it
    assert OLD not in key_id(OLD.encode()) and len(key_id(OLD.encode())) == 12


async def test_suppression_and_requests_survive_a_rotation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    clock = FrozenClock(START)
    async with running_app(data, clock=clock, pii_hash_key=OLD, run_lake_sink=False) as harness:
        await send(harness, [{"type": "identify", "userId": USER, "anonymousId": ANON}])
        await settle(harness)
        request = harness.services.privacy.submit(USER)
        assert harness.services.suppressions.is_stored(ANON)

    # the key rotated without its predecessor on the ring: the old hashes match nothing
    async with running_app(data, clock=clock, pii_hash_key=NEW, run_lake_sink=False) as harness:
        assert not harness.services.suppressions.is_stored(ANON)
        assert harness.services.privacy.requests.for_identity(USER) == []

    async with running_app(
        data, clock=clock, pii_hash_key=NEW, pii_hash_retired_keys=OLD, run_lake_sink=False
    ) as harness:
        services = harness.services
        assert services.suppressions.is_stored(ANON) and services.suppressions.is_suppressed(USER)
        answer = await send(
            harness,
            [
                {"type": "track", "userId": USER, "event": "Product Viewed"},
                {"type": "track", "userId": "someone-else", "event": "Product Viewed"},
            ],
        )
        assert answer["accepted"] == 1 and answer["suppressed"] == 1
        assert [r.id for r in services.privacy.requests.for_identity(USER)] == [request.id]
        # the pending request is found again rather than a second one opened
        again, created = services.privacy.requests.open_or_create(USER)
        assert again.id == request.id and not created
        # un-suppressing removes the hash whichever key made it
        assert services.suppressions.unsuppress(ANON)
        assert not services.suppressions.is_stored(ANON)


async def test_an_email_id_is_searched_under_every_key(tmp_path: Path) -> None:
    """A person whose id is an e-mail address: the erasure's search looks for the address's
    hash under the old key too (a dead letter or a lake event may hold it in traits)."""
    data = tmp_path / "data"
    clock = FrozenClock(START)
    email = "ada@example.com"
    async with running_app(data, clock=clock, pii_hash_key=OLD, run_lake_sink=False) as harness:
        await send(harness, [{"type": "identify", "userId": email}])
        await settle(harness)
    async with running_app(
        data, clock=clock, pii_hash_key=NEW, pii_hash_retired_keys=OLD, run_lake_sink=False
    ) as harness:
        subject = harness.services.privacy.resolve(email)
        assert subject.profile_ids
        assert PiiHasher(OLD.encode(), []).hash_value("email", email) in subject.hashed
        assert PiiHasher(NEW.encode(), []).hash_value("email", email) in subject.hashed


def test_rotate_pii_key_moves_the_key_file_to_the_retired_keys(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", pii_hash_key="")
    first = settings.resolved_pii_hash_key()
    runner = CliRunner()
    env = {"PERSONIFY_DATA_DIR": str(settings.data_dir), "PERSONIFY_PII_HASH_KEY": ""}
    result = runner.invoke(main, ["privacy", "rotate-pii-key"], env=env)
    assert result.exit_code == 0, result.output
    second = settings.resolved_pii_hash_key()
    assert second != first
    assert settings.resolved_pii_hash_retired_keys() == (first,)
    assert f"active  {key_id(second)}" in result.output
    assert f"retired {key_id(first)}" in result.output
    assert oct(settings.pii_hash_key_file.stat().st_mode & 0o777) == "0o600"
    assert oct(settings.pii_hash_retired_file.stat().st_mode & 0o777) == "0o600"
    listed = runner.invoke(main, ["privacy", "pii-keys"], env=env)
    assert listed.output.splitlines() == [f"active  {key_id(second)}", f"retired {key_id(first)}"]
    # a key set in the environment is the operator's to rotate
    refused = runner.invoke(
        main, ["privacy", "rotate-pii-key"], env={**env, "PERSONIFY_PII_HASH_KEY": "set"}
    )
    assert refused.exit_code == 2 and "PERSONIFY_PII_HASH_RETIRED_KEYS" in refused.output
