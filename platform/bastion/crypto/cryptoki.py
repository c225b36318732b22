"""C_Login on an open session: the one PKCS#11 call python-pkcs11 does not offer.

python-pkcs11's `Token.open(user_pin=...)` is C_OpenSession then C_Login, and
when the login fails it raises without closing the session it opened -- nor can
anyone reach that session afterwards. Every wrong PIN, and every login the
process had made already (CKR_USER_ALREADY_LOGGED_IN), leaks a session. And its
`Session.close()` of a session opened that way calls C_Logout, which ends the
login of *every* session the process has on that token (PKCS#11 login state
belongs to the application and token, not to a session): one closed provider
leaves the others' sessions unable to see the (private) KEKs.

So the pkcs11 provider opens a plain session with python-pkcs11 -- one it can
always close, and whose close never logs out -- and logs it in here, calling
the module's C_Login through the function list C_GetFunctionList returns (the
one entry point every PKCS#11 module must export). `ctypes.CDLL` of the same
path is the very library python-pkcs11 loaded and initialised: the dynamic
loader keeps one copy per path. The process then stays logged in for as long as
it has a session open on the token.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable

import pkcs11
from pkcs11 import exceptions as p11

CKR_OK = 0
CKU_USER = 1

# Return values of C_Login, as python-pkcs11 maps them (`pkcs11._pkcs11.map_rv_to_error`).
_ERRORS: dict[int, type[p11.PKCS11Error]] = {
    0x030: p11.DeviceError,
    0x031: p11.DeviceMemory,
    0x032: p11.DeviceRemoved,
    0x0A0: p11.PinIncorrect,
    0x0A1: p11.PinInvalid,
    0x0A2: p11.PinLenRange,
    0x0A3: p11.PinExpired,
    0x0A4: p11.PinLocked,
    0x0B0: p11.SessionClosed,
    0x0B3: p11.SessionHandleInvalid,
    0x0E0: p11.TokenNotPresent,
    0x0E1: p11.TokenNotRecognised,
    0x100: p11.UserAlreadyLoggedIn,
    0x102: p11.UserPinNotInitialized,
    0x104: p11.AnotherUserAlreadyLoggedIn,
    0x105: p11.UserTooManyTypes,
}

# CK_FUNCTION_LIST up to C_Login, in the order of the PKCS#11 specification (2.x and 3.x).
_FUNCTIONS = (
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
)


class _Version(ctypes.Structure):
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


class _FunctionList(ctypes.Structure):
    _fields_ = (("version", _Version), *((name, ctypes.c_void_p) for name in _FUNCTIONS))


# CK_RV C_Login(CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_ULONG)
_LOGIN = ctypes.CFUNCTYPE(
    ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong
)
_Login = Callable[[int, int, bytes, int], int]
_lock = threading.Lock()


@functools.cache
def _c_login(module: str) -> tuple[ctypes.CDLL, _Login]:
    """The module's C_Login (with the library handle that keeps it loaded)."""
    library = ctypes.CDLL(module)
    get_function_list = library.C_GetFunctionList
    get_function_list.argtypes = (ctypes.POINTER(ctypes.POINTER(_FunctionList)),)
    get_function_list.restype = ctypes.c_ulong
    functions = ctypes.POINTER(_FunctionList)()
    rv = get_function_list(ctypes.byref(functions))
    if rv != CKR_OK or not functions or not functions.contents.C_Login:
        raise p11.PKCS11Error(f"C_GetFunctionList returned 0x{rv:x}")
    login: _Login = _LOGIN(functions.contents.C_Login)
    return library, login


def login(module: str, session: pkcs11.Session, pin: str) -> None:
    """Log the process in to `session`'s token as the user (CKU_USER) with `pin`.

    `module` is the PKCS#11 library `session` was opened with. Raises the
    python-pkcs11 exception python-pkcs11 itself would raise for the return
    value (`PinIncorrect`, `UserAlreadyLoggedIn`, ...; `PKCS11Error` otherwise),
    never with the PIN in it. The session stays open either way: the caller
    closes it.
    """
    with _lock:
        _, c_login = _c_login(module)
    encoded = pin.encode("utf-8")
    # The Cython Session has `handle`; python-pkcs11's type stubs do not declare it.
    handle: int = session.handle  # type: ignore[attr-defined]
    rv = c_login(handle, CKU_USER, encoded, len(encoded))
    if rv != CKR_OK:
        raise _ERRORS.get(rv, p11.PKCS11Error)(f"C_Login returned 0x{rv:x}")
