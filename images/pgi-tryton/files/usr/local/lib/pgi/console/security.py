"""Passwords, one-time codes, session tokens and the key that encrypts the student passwords the
console keeps for the class sheets."""
import base64
import hashlib
import hmac
import os
import secrets

from . import config

# Argon2id with OWASP's minimum memory and passes (19 MiB, 2 passes) in 2 lanes, one per vCPU a
# deploy gives the VM: the same memory-hard work as OWASP's 1-lane minimum (an attacker's cost per
# guess is the memory and passes, not the lanes; RFC 9106 advises lanes up to twice the cores),
# in less wall time when both vCPUs are free (in the lab VM under software emulation: 160-220 ms
# a hash against ~260 ms with 1 lane). A login costs ~30 ms of CPU natively. argon2-cffi's
# defaults (100 MiB, 8 lanes) would take seconds emulated and a twentieth of the VM's memory.
# Hashes made with other parameters still verify, and are remade on the next login.
_hasher = None


def hasher():
    global _hasher
    if _hasher is None:
        from argon2 import PasswordHasher, Type
        _hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=2, hash_len=32, salt_len=16, type=Type.ID)
    return _hasher


def hash_password(password):
    return hasher().hash(password)


def verify_password(stored, password):
    """(ok, new_hash): new_hash when the stored hash used other parameters (rehashed on login)."""
    from argon2.exceptions import InvalidHash, VerificationError, VerifyMismatchError
    if not stored:
        # the same work as a real check: an unknown login takes as long as a wrong password
        try:
            hasher().verify(_DUMMY, password + 'x')
        except (VerifyMismatchError, VerificationError, InvalidHash):
            pass
        return False, None
    try:
        hasher().verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHash):
        return False, None
    return True, hash_password(password) if hasher().check_needs_rehash(stored) else None


_DUMMY = '$argon2id$v=19$m=19456,t=2,p=2$5AQue9vVZgNa7CNUhhAXzg$inzABnIxzD97rv/WbwAl0aZEJwGBrv5Xc0Do2k8reJI'  # a hash of a random, forgotten password

# one-time codes: read from a screen or a letter, typed by hand: no 0/O, 1/l/I
CODE_ALPHABET = 'ABCDEFGHJKMNPQRSTUVWXYZ23456789'


def new_code():
    """A one-time code, 12 characters (~59 bits) in three groups: XXXX-XXXX-XXXX."""
    raw = ''.join(secrets.choice(CODE_ALPHABET) for _ in range(12))
    return '%s-%s-%s' % (raw[:4], raw[4:8], raw[8:])


def normalise_code(code):
    return ''.join(ch for ch in (code or '').upper() if ch in CODE_ALPHABET)


def code_hash(code):
    """Codes are random and expire: a keyed SHA-256 is enough (no offline guessing of 59 bits)."""
    return hmac.new(store_key(), normalise_code(code).encode(), hashlib.sha256).hexdigest()


def new_token():
    return secrets.token_urlsafe(32)


def token_hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


def same(a, b):
    return hmac.compare_digest(str(a or ''), str(b or ''))


_key = None


def store_key():
    """The console's own key (32 random bytes, /srv/pgi/console/secret.key, readable by the console
    user only), made on first use."""
    global _key
    if _key is None:
        path = config.SECRET_KEY_FILE
        try:
            with open(path, 'rb') as f:
                _key = base64.urlsafe_b64decode(f.read().strip())
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            key = os.urandom(32)
            fd = os.open(path + '.tmp', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, 'wb') as f:
                f.write(base64.urlsafe_b64encode(key) + b'\n')
            try:
                os.link(path + '.tmp', path)  # never replaces a key another process just made
            except FileExistsError:
                pass
            os.remove(path + '.tmp')
            with open(path, 'rb') as f:
                _key = base64.urlsafe_b64decode(f.read().strip())
    return _key


_fernets = []


def _fernet():
    """One Fernet object for the process (the key never changes while it runs): a class sheet
    unseals one password per student."""
    if not _fernets:
        from cryptography.fernet import Fernet
        _fernets.append(Fernet(base64.urlsafe_b64encode(store_key())))
    return _fernets[0]


def warm():
    """Loads cryptography (its Rust bindings: the slowest import of the console) before the first
    page that needs it."""
    from cryptography.fernet import Fernet  # noqa: F401


def seal(text):
    """The student and teacher Tryton passwords kept for the class sheets are encrypted in the store
    (Fernet: AES-128-CBC + HMAC-SHA256, python3-cryptography) with the console's key: a copy of the
    store alone does not reveal them."""
    return None if text is None else _fernet().encrypt(text.encode()).decode()


def unseal(token):
    return None if token is None else _fernet().decrypt(token.encode()).decode()
