/*
 * A dunningd channel plugin in plain C, against plugins/api/dunningd_plugin.h.
 *
 *   cc -shared -fPIC -I../../plugins/api -o libdunningd_plugin_c_echo.so echo.c
 *
 * It answers every delivery "sent", one send per delivery: the optional
 * send_batch member is NULL. The test suite also builds it with
 * -DGARBAGE (answers bytes that are not JSON), -DABI=2 (claims another ABI
 * version) and -DNO_ENTRY (exports no entry point), to prove the daemon
 * refuses or contains each of those.
 */
#include <stdlib.h>
#include <string.h>

#include "dunningd_plugin.h"

#ifndef ABI
#define ABI DUNNINGD_ABI_VERSION
#endif

/* Copies a string into a buffer this plugin owns (freed by echo_free). */
static int32_t put(DunningdOwnedBytes *out, const char *text, int32_t status) {
    size_t n = strlen(text);
    uint8_t *p = malloc(n ? n : 1);
    if (p == NULL) {
        out->ptr = NULL;
        out->len = out->cap = 0;
        return DUNNINGD_STATUS_ERROR;
    }
    memcpy(p, text, n);
    out->ptr = p;
    out->len = n;
    out->cap = n;
    return status;
}

static int32_t echo_open(DunningdBytes config, void **out_channel, DunningdOwnedBytes *out_error) {
    (void)out_error;
    (void)config;
    /* No per-channel state: any non-NULL handle will do. */
    *out_channel = (void *)&put;
    return DUNNINGD_STATUS_OK;
}

static int32_t echo_send(void *channel, DunningdBytes request, DunningdOwnedBytes *out) {
    (void)channel;
    (void)request;
#ifdef GARBAGE
    return put(out, "this is not json", DUNNINGD_STATUS_OK);
#else
    return put(out, "{\"outcome\":\"sent\",\"receipt\":\"c-echo\"}", DUNNINGD_STATUS_OK);
#endif
}

static void echo_close(void *channel) { (void)channel; }

static void echo_free(DunningdOwnedBytes bytes) { free(bytes.ptr); }

/* "used": the -DNO_ENTRY variant still carries the table, unreferenced. */
__attribute__((used)) static const DunningdPluginVTable VTABLE = {
    ABI,
    sizeof(DunningdPluginVTable),
    {(const uint8_t *)"c-echo", 6},
    {(const uint8_t *)"1.0.0", 5},
    echo_open,
    echo_send,
    echo_close,
    echo_free,
    NULL, /* send_batch: called through send only */
};

#ifndef NO_ENTRY
const DunningdPluginVTable *dunningd_plugin_entry_v1(uint32_t host_abi_version) {
    return host_abi_version == DUNNINGD_ABI_VERSION ? &VTABLE : NULL;
}
#endif
