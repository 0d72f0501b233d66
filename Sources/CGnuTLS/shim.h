#pragma once
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <gnutls/socket.h>

// What Swift cannot import from the headers: macros that are expressions, and gnutls_free,
// a function-pointer variable hidden behind a macro.
static inline unsigned zramnbd_gnutls_server_flags(void) {
    return GNUTLS_SERVER | GNUTLS_NO_SIGNAL | GNUTLS_NONBLOCK;
}
static inline void zramnbd_gnutls_free(void *p) { gnutls_free(p); }
