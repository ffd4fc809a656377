/*
 * dunningd plugin ABI, version 1. See ABI.md beside this file for ownership,
 * threading and the JSON payloads. Matches plugins/api/src/lib.rs exactly.
 */
#ifndef DUNNINGD_PLUGIN_H
#define DUNNINGD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DUNNINGD_ABI_VERSION 1u

#define DUNNINGD_STATUS_OK 0
#define DUNNINGD_STATUS_ERROR 1
#define DUNNINGD_STATUS_PANICKED 2

/* Borrowed from the caller; valid only during the call. */
typedef struct {
    const uint8_t *ptr;
    size_t len;
} DunningdBytes;

/* Allocated by the plugin; handed back through free_bytes exactly once. */
typedef struct {
    uint8_t *ptr;
    size_t len;
    size_t cap;
} DunningdOwnedBytes;

/*
 * Append-only: new members are only ever added at the end. Set struct_size to
 * sizeof(DunningdPluginVTable) as you compiled it; the host needs at least
 * DUNNINGD_VTABLE_MIN_SIZE and reads later members only when struct_size
 * covers them.
 */
typedef struct {
    uint32_t abi_version;
    uint32_t struct_size;
    DunningdBytes name;
    DunningdBytes version;
    int32_t (*open)(DunningdBytes config, void **out_channel, DunningdOwnedBytes *out_error);
    int32_t (*send)(void *channel, DunningdBytes request, DunningdOwnedBytes *out_response);
    void (*close)(void *channel);
    void (*free_bytes)(DunningdOwnedBytes bytes);
    /*
     * Optional: NULL to be called through send only. A JSON array of requests
     * in; on DUNNINGD_STATUS_OK a JSON array of as many responses, in the same
     * order. Thread-safe like send. See ABI.md, "send_batch".
     */
    int32_t (*send_batch)(void *channel, DunningdBytes requests, DunningdOwnedBytes *out_responses);
} DunningdPluginVTable;

/* The table as ABI version 1 first shipped (through free_bytes). */
#define DUNNINGD_VTABLE_MIN_SIZE offsetof(DunningdPluginVTable, send_batch)

/* The one exported symbol. Return NULL for an ABI version you do not speak. */
const DunningdPluginVTable *dunningd_plugin_entry_v1(uint32_t host_abi_version);

#ifdef __cplusplus
}
#endif

#endif /* DUNNINGD_PLUGIN_H */
