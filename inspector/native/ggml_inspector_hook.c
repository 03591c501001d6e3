/* ggml-inspector's native hook: captures the tensors an unmodified program computes on ggml's backend
 * scheduler and streams them to the ggml-inspector process that started it (inspector/native/exec.py),
 * or, with no such process, into a file per process in a dump folder (`ggml-inspector import`).
 *
 * Why interposition works: libllama, libmtmd and any program linked against a shared libggml-base reach
 * ggml_backend_sched_* through the dynamic linker, so this library, preloaded, is called first.  It
 * installs its own eval callback on every scheduler and chains the program's in front of it, so the
 * program sees exactly the calls and answers it would see unhooked.
 *
 * Why no ggml at link time: LD_PRELOAD reaches every process the program starts, most of which never
 * touch ggml, and a Python program dlopens libllama long after start-up.  So every ggml function is
 * looked up at the first scheduler call, and the layouts we read (struct ggml_tensor from the pinned
 * headers, the head of the private struct ggml_backend_buffer) are checked against the running ggml
 * before we trust them.
 *
 * Link-time use (-DGGML_INSPECTOR_LINKED): a statically linked program defines ggml_backend_sched_*
 * itself and ignores LD_PRELOAD, so nothing can be interposed and dlsym finds nothing.  Compiled into
 * such a program, this file defines no interposer, calls ggml directly, and is driven by the program:
 * ggml_inspector_attach after creating a scheduler, ggml_inspector_begin before each compute, and
 * ggml_inspector_set_eval_callback in place of ggml_backend_sched_set_eval_callback for a program
 * that has an eval callback of its own (inspector/native/README.md).
 *
 * Why it never stops the program: whatever goes wrong on our side (no socket, another ggml, a parent
 * that went away, a full disk, no memory) turns the hook off, and from then on every call is only
 * forwarded.
 *
 * Wire format (inspector/native/README.md): frames of {uint32 magic "GGIH", kind, header length, 0; uint64 data
 * length}, little-endian, then a JSON header and the data.  One mutex serialises the frames of all
 * threads and guards all state; the scheduler runs our callback on the thread that called compute.
 */
#define _GNU_SOURCE
#ifndef GGML_INSPECTOR_LINKED
#include <dlfcn.h>
#endif
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <regex.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ggml-backend.h"
#include "ggml.h"
#include "ggml_inspector.h"

enum frame_kind { HELLO = 1, EVAL, TENSOR, SKIP, NOTICE, BYE, INPUT, NAMES };

#define FRAME_MAGIC 0x48494747u
#define FRAME_HEAD_SIZE 24
/* The receiver refuses larger frames. */
#define MAX_TENSOR_BYTES ((size_t) 8 << 30)
/* Tensors are read and sent in pieces of at most this size, so the copy buffer stays small. */
#define COPY_CHUNK ((size_t) 64 << 20)
#define PATTERN_SEPARATOR '\x1f'
/* In ggml-inspector's own process (ggml_inspector_connect), a tensor in host memory of at least this many bytes is
 * lent, not sent: its frame carries its address, the reader copies it from there, and the hook waits for that
 * (ggml_inspector_lent_copied).  The socket would copy it twice, into the kernel and out; at this size the wait
 * for the reader is short beside the copy.  inspector/native/inprocess.py's reader. */
#define LEND_MIN_BYTES ((size_t) 1 << 20)
/* A KV-cache write (SET_ROWS) is sent as the rows it wrote, listed in its header as runs of consecutive rows:
 * at most this many runs, in the order written or, when that has more, in ascending order (a transposed V cache
 * writes one-value rows token by token: n_embd_v_gqa runs per token in the order written, per run of cells sorted);
 * a write of more is sent whole, as any other tensor.  inspector/constants.py's MAX_WRITTEN_RUNS. */
#define MAX_WRITTEN_RUNS 16384
/* A view over parts of rows (nb[0] one element) whose rows hold less than half the bytes it spans (attention's view
 * of a transposed V cache: n_kv cells of rows n_ctx long) is sent as its rows one after another, at most this many
 * rows; otherwise the bytes it spans are sent.  inspector/constants.py's MAX_PACKED_ROWS. */
#define MAX_PACKED_ROWS 65536
/* Strings are cut at STRING_LIMIT bytes; a TENSOR header holds at most 18 strings, each at most six
 * times longer once escaped, and at most MAX_WRITTEN_RUNS runs of two numbers of at most 20 digits, so
 * JSON_CAPACITY is never reached by a real header (and stays under the 1 MiB the receiver takes). */
#define STRING_LIMIT 1024
#define JSON_CAPACITY (128 * 1024 + MAX_WRITTEN_RUNS * 48)
/* An evaluation's input leafs, read whether or not they are selected (llama.cpp's names, llama-graph.cpp):
 * token ids, positions and output rows (i32), or the input embeddings (f32), which Python digests from the
 * bytes sent.  A ubatch of embeddings feeds the leaf inp_embd straight on, and llama.cpp names that tensor
 * "embd" (with tokens, "embd" is the GET_ROWS node, not a leaf).  The output rows leaf is "out_ids".
 * Bounded: a leaf of more than 1 Mi token ids, positions or rows, or embeddings over 64 MiB, are announced
 * without their bytes. */
static const char * const input_leafs[] = {"inp_tokens", "inp_pos", "inp_embd", "embd", "out_ids", "inp_out_ids"};
#define N_INPUT_LEAFS (sizeof input_leafs / sizeof input_leafs[0])
#define MAX_INPUT_VALUES ((int64_t) 1 << 20)
#define MAX_INPUT_EMBD_BYTES ((size_t) 64 << 20)
/* NAMES lists at most this many distinct node names of a scheduler's first graph. */
#define MAX_NAMES 2048
/* Why a selected node is not captured (the Python hook's words, inspector/capture/hook.py). */
#define WHOLE_CACHE_REASON "a view of the whole KV cache (n_ctx rows): the writes store the rows each evaluation wrote"
#define WHOLE_CACHE_LEAF_REASON "the whole KV cache (n_ctx rows): its writes store the rows each evaluation wrote, and export --eval E rebuilds it"
#define NOT_COMPUTED_REASON "not computed: no output of the graph needs it (ggml_build_forward_select chose another path)"

/* ---- ggml: looked up at run time when preloaded, linked when compiled into the program ---- */

static struct {
#ifndef GGML_INSPECTOR_LINKED
    __typeof__(ggml_backend_sched_new) *new;
    __typeof__(ggml_backend_sched_free) *free;
    __typeof__(ggml_backend_sched_graph_compute) *graph_compute;
    __typeof__(ggml_backend_sched_graph_compute_async) *graph_compute_async;
    __typeof__(ggml_backend_sched_reserve) *reserve;
    __typeof__(ggml_backend_sched_alloc_graph) *alloc_graph;
    __typeof__(ggml_backend_sched_synchronize) *synchronize;
#endif
    __typeof__(ggml_backend_sched_set_eval_callback) *set_eval_callback;
} real;

static struct {
    __typeof__(ggml_tensor_overhead) *tensor_overhead;
    __typeof__(ggml_nbytes) *nbytes;
    __typeof__(ggml_n_dims) *n_dims;
    __typeof__(ggml_op_desc) *op_desc;
    __typeof__(ggml_type_name) *type_name;
    __typeof__(ggml_blck_size) *blck_size;
    __typeof__(ggml_type_size) *type_size;
    __typeof__(ggml_backend_tensor_get) *tensor_get;
    __typeof__(ggml_backend_buffer_name) *buffer_name;
    __typeof__(ggml_backend_buffer_get_type) *buffer_get_type;
    __typeof__(ggml_backend_buft_name) *buft_name;
    __typeof__(ggml_graph_n_nodes) *graph_n_nodes; /* optional: EVAL says -1 without it */
    __typeof__(ggml_backend_buffer_is_host) *buffer_is_host; /* optional: without it every tensor is copied first */
    /* optional: without them every graph is captured by the per-node callback */
    __typeof__(ggml_graph_node) *graph_node;
    __typeof__(ggml_graph_get_tensor) *graph_get_tensor;
} gg;

/* The private struct ggml_object that ggml_tensor_overhead() counts in front of every tensor. */
struct object_mirror {
    size_t offs;
    size_t size;
    void * next;
    int    type;
    char   padding[4];
};

/* The head of the private struct ggml_backend_buffer: its interface, then its type.  Read only to learn
 * whether get_tensor exists (the CPU's repacked weights have none, and ggml_backend_tensor_get would
 * jump to NULL); trusted only when buft equals what ggml_backend_buffer_get_type returns. */
struct buffer_mirror {
    void *free_buffer, *get_base, *init_tensor, *memset_tensor, *set_tensor, *get_tensor;
    void *set_tensor_2d, *get_tensor_2d, *cpy_tensor, *clear, *reset;
    void *buft;
};

#ifdef GGML_INSPECTOR_LINKED

/* Compiled into the program: its own ggml, bound by the linker like any other call. */
#define REAL(field, function) (real.field = &function)
#define HELPER(field, function) (gg.field = &function)
#define NEED HELPER

static void resolve_real(const void * caller) {
    (void) caller;
    REAL(set_eval_callback, ggml_backend_sched_set_eval_callback);
}

#else

/* Set when ggml is reachable only from the caller's own dependencies (a library dlopen'ed RTLD_LOCAL):
 * neither RTLD_NEXT nor RTLD_DEFAULT sees it there, but a handle on the caller does. */
static void * ggml_scope;

static bool in_this_library(const void * symbol) {
    Dl_info ours, theirs;
    return dladdr((const void *) &in_this_library, &ours) && dladdr(symbol, &theirs) &&
           ours.dli_fbase == theirs.dli_fbase;
}

static void * symbol_in_scope_of(const void * caller, const char * name) {
    Dl_info info;
    if (!dladdr(caller, &info) || info.dli_fname == NULL) {
        return NULL;
    }
    void * handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == NULL) {
        return NULL;
    }
    void * symbol = dlsym(handle, name);
    if (symbol != NULL && !in_this_library(symbol) && ggml_scope == NULL) {
        ggml_scope = handle; /* kept open: the helpers are looked up there too */
    } else {
        dlclose(handle);
    }
    return symbol;
}

/* The definition `name` would have bound to for `caller` had we not been preloaded.  RTLD_DEFAULT comes
 * last for a program linked against this shared library, where ggml may come before us in the search
 * order; any answer that is our own definition would make us call ourselves, so it does not count. */
static void * real_symbol(const char * name, const void * caller) {
    for (int way = 0; way < 3; way++) {
        void * symbol = way == 0 ? dlsym(RTLD_NEXT, name)
                      : way == 1 ? symbol_in_scope_of(caller, name)
                                 : dlsym(RTLD_DEFAULT, name);
        if (symbol != NULL && !in_this_library(symbol)) {
            return symbol;
        }
    }
    return NULL;
}

static void * ggml_symbol(const char * name) {
    void * symbol = dlsym(RTLD_DEFAULT, name);
    return symbol != NULL || ggml_scope == NULL ? symbol : dlsym(ggml_scope, name);
}

#define REAL(field, function) (real.field = (__typeof__(real.field)) real_symbol(#function, caller))
#define HELPER(field, function) (gg.field = (__typeof__(gg.field)) ggml_symbol(#function))
#define NEED(field, function) if (HELPER(field, function) == NULL && missing_helper == NULL) missing_helper = #function

static void resolve_real(const void * caller) {
    REAL(new, ggml_backend_sched_new);
    REAL(free, ggml_backend_sched_free);
    REAL(set_eval_callback, ggml_backend_sched_set_eval_callback);
    REAL(graph_compute, ggml_backend_sched_graph_compute);
    REAL(graph_compute_async, ggml_backend_sched_graph_compute_async);
    REAL(reserve, ggml_backend_sched_reserve);
    REAL(alloc_graph, ggml_backend_sched_alloc_graph);
    REAL(synchronize, ggml_backend_sched_synchronize);
}

/* Unhooked, a call to a function the program's ggml lacks would have failed in the dynamic linker. */
__attribute__((noreturn)) static void missing(const char * name) {
    fprintf(stderr, "ggml_inspector_hook: symbol lookup error: %s is not in the program's ggml\n", name);
    _exit(127);
}

#endif

/* Looks up every helper; returns the name of the first one missing, or NULL. */
static const char * resolve_helpers(void) {
    const char * missing_helper = NULL;
    NEED(tensor_overhead, ggml_tensor_overhead);
    NEED(nbytes, ggml_nbytes);
    NEED(n_dims, ggml_n_dims);
    NEED(op_desc, ggml_op_desc);
    NEED(type_name, ggml_type_name);
    NEED(blck_size, ggml_blck_size);
    NEED(type_size, ggml_type_size);
    NEED(tensor_get, ggml_backend_tensor_get);
    NEED(buffer_name, ggml_backend_buffer_name);
    NEED(buffer_get_type, ggml_backend_buffer_get_type);
    NEED(buft_name, ggml_backend_buft_name);
    HELPER(graph_n_nodes, ggml_graph_n_nodes);
    HELPER(buffer_is_host, ggml_backend_buffer_is_host);
    HELPER(graph_node, ggml_graph_node);
    HELPER(graph_get_tensor, ggml_graph_get_tensor);
    return missing_helper;
}
#undef NEED
#undef HELPER
#undef REAL

/* ---- state, all guarded by `lock` ---- */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bool resolved;            /* the real functions have been looked up */
static bool attempted;           /* this process has tried to connect */
static bool checked;             /* ggml and the selection have been checked (once per process image) */
static bool compatible, selectable;
static char incompatibility[512], selection_error[512];
static size_t runtime_overhead;  /* the running ggml's ggml_tensor_overhead(), 0 if unknown */
static int connection = -1;      /* the hook is on exactly while this is open: the socket or the file */
/* Writing to a file in the dump folder: the bytes written so far, and the most the file may hold.  A
 * write past RLIMIT_FSIZE would raise SIGXFSZ, which kills the program; we stop before it instead. */
static bool to_file;
static bool lending;   /* connected in-process: large host tensors are lent (LEND_MIN_BYTES) */
static sem_t lent_copied;
static bool lent_ready; /* lent_copied initialised */
static unsigned long long file_written, file_limit;
static int n_schedulers;
static long long n_computes;
/* Frame heads written so far (the data that follows a head is written before the next one): a reader in this
 * process knows it has read everything sent when it has read this many frames. */
static unsigned long long frames_sent;

static struct {
    bool      all;               /* no pattern: every node, and the leafs that are graph inputs */
    char **   globs;
    size_t    n_globs;
    regex_t * regexes;
    size_t    n_regexes;
} selection;

/* How graphs are captured (GGML_INSPECTOR_MODE).  Unsplit, the default: the selected nodes are flagged as graph
 * outputs when the scheduler plans its buffers (ggml_backend_sched_reserve) and when it allocates a graph
 * (ggml_backend_sched_alloc_graph), so the allocator never reuses their memory; the graph is computed in one
 * piece, as unhooked, and copied after.  Asking for nodes one by one instead makes the scheduler split the
 * graph and synchronise at every node asked for (no fusion, no CUDA graphs).  The per-node callback stays the
 * fallback: on request (GGML_INSPECTOR_MODE=callback), when the tensors kept would take more than
 * GGML_INSPECTOR_UNSPLIT_MAX_MIB of compute buffer, for a graph whose plan the hook did not flag, and for a
 * graph that writes into a computed node in place (read after the compute, that node would show the later
 * value).  Flags set at alloc alone are not enough: the allocator reuses the plan it made at reserve. */
#define DEFAULT_UNSPLIT_MAX_MIB 4096ull
static struct {
    bool               unsplit;   /* false: GGML_INSPECTOR_MODE=callback */
    unsigned long long max_bytes; /* of tensors kept to the end of a compute */
} mode;


/* Set while the nodes of a graph computed in one piece are read: scheduler copies of inputs are read through
 * their originals there (see data_of). */
static struct ggml_cgraph * unsplit_graph;

/* ---- frames ---- */

static struct {
    unsigned char bytes[FRAME_HEAD_SIZE + JSON_CAPACITY];
    size_t        length;
    bool          overflow;
} frame;

static struct {
    void * bytes;
    size_t capacity;
    size_t filled; /* bytes gathered and not yet sent (a KV-cache write's rows) */
} copy;

/* The KV-cache write being sent: the destination rows it wrote, in the order of its row indices. */
static struct {
    int64_t * rows;
    size_t    capacity;
    size_t    count;
} written;

static void disconnect(void) {
    if (connection >= 0) {
        close(connection);
        connection = -1;
    }
    lending = false;
}

/* After a frame lending bytes: waits until the reader has copied them; turns the hook off when the reader has gone
 * (its end of the socket shut: an interrupted capture), so a run never waits on nobody. */
static void wait_until_copied(void) {
    for (;;) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 100 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if (sem_timedwait(&lent_copied, &until) == 0) {
            return;
        }
        if (errno != ETIMEDOUT && errno != EINTR) {
            break;
        }
        char    byte;
        ssize_t peeked = recv(connection, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
        if (peeked == 0 || (peeked < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            break; /* the reader never writes: readable means its end is shut */
        }
    }
    disconnect();
}

static bool send_all(const void * data, size_t size) {
    const unsigned char * bytes = data;
    if (to_file) {
        if (size > file_limit - file_written) {
            return false;
        }
        file_written += size;
    }
    while (size > 0) {
        /* MSG_NOSIGNAL: a parent that went away must not kill the program with SIGPIPE. */
        ssize_t sent = to_file ? write(connection, bytes, size) : send(connection, bytes, size, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) {
            continue;
        }
        if (sent <= 0) {
            return false;
        }
        bytes += sent;
        size -= (size_t) sent;
    }
    return true;
}

static void put_bytes(const void * data, size_t size) {
    if (frame.length + size > sizeof frame.bytes) {
        frame.overflow = true;
        return;
    }
    memcpy(frame.bytes + frame.length, data, size);
    frame.length += size;
}

static void put_text(const char * text) {
    put_bytes(text, strlen(text));
}

/* The length of the well-formed UTF-8 sequence at `s`, or 0 if the byte there starts none. */
static size_t utf8_sequence(const unsigned char * s, size_t available) {
    size_t   length;
    uint32_t code, least;
    if (s[0] < 0x80) {
        return 1;
    } else if (s[0] >= 0xC2 && s[0] <= 0xDF) {
        length = 2, code = s[0] & 0x1Fu, least = 0x80;
    } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        length = 3, code = s[0] & 0x0Fu, least = 0x800;
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        length = 4, code = s[0] & 0x07u, least = 0x10000;
    } else {
        return 0;
    }
    if (available < length) {
        return 0;
    }
    for (size_t i = 1; i < length; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0;
        }
        code = code << 6 | (s[i] & 0x3Fu);
    }
    return code < least || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF) ? 0 : length;
}

/* Tensor names are arbitrary bytes; a byte that is not valid UTF-8 is written as the code point of the
 * same value (latin-1), so the header always stays valid JSON. */
static void put_string(const char * text) {
    const unsigned char * s = (const unsigned char *) (text != NULL ? text : "");
    size_t length = strnlen((const char *) s, STRING_LIMIT);
    put_text("\"");
    for (size_t i = 0; i < length;) {
        size_t run = utf8_sequence(s + i, length - i);
        if (run > 1 || (run == 1 && s[i] >= 0x20 && s[i] != '"' && s[i] != '\\')) {
            put_bytes(s + i, run);
            i += run;
            continue;
        }
        char escape[8];
        if (s[i] == '"' || s[i] == '\\') {
            snprintf(escape, sizeof escape, "\\%c", s[i]);
        } else {
            snprintf(escape, sizeof escape, "\\u%04x", s[i]);
        }
        put_text(escape);
        i++;
    }
    put_text("\"");
}

static void separate(void) {
    unsigned char last = frame.bytes[frame.length - 1];
    if (last != '{' && last != '[' && last != ':') {
        put_text(",");
    }
}

static void put_number(long long value) {
    char text[24];
    snprintf(text, sizeof text, "%lld", value);
    separate();
    put_text(text);
}

static void put_key(const char * key) {
    separate();
    put_string(key);
    put_text(":");
}

static void field_string(const char * key, const char * value) {
    put_key(key);
    put_string(value);
}

static void field_number(const char * key, long long value) {
    put_key(key);
    put_number(value);
}

static void field_bool(const char * key, bool value) {
    put_key(key);
    put_text(value ? "true" : "false");
}

static void json_begin(void) {
    frame.length = FRAME_HEAD_SIZE;
    frame.overflow = false;
    put_text("{");
}

static void put_le(unsigned char * at, uint64_t value, int size) {
    for (int i = 0; i < size; i++) {
        at[i] = (unsigned char) (value >> (8 * i));
    }
}

/* Sends the frame head and the header built since json_begin(); `data_size` bytes must follow.
 * False when the hook is off afterwards (the parent is gone). */
static bool send_head(enum frame_kind kind, uint64_t data_size) {
    put_text("}");
    if (frame.overflow) {
        disconnect();
        return false;
    }
    put_le(frame.bytes, FRAME_MAGIC, 4);
    put_le(frame.bytes + 4, kind, 4);
    put_le(frame.bytes + 8, frame.length - FRAME_HEAD_SIZE, 4);
    put_le(frame.bytes + 12, 0, 4);
    put_le(frame.bytes + 16, data_size, 8);
    if (!send_all(frame.bytes, frame.length)) {
        disconnect();
        return false;
    }
    frames_sent++;
    return true;
}

static void notice(bool incompatible, const char * reason) {
    json_begin();
    field_bool("incompatible", incompatible);
    field_string("reason", reason);
    send_head(NOTICE, 0);
}

/* Something on our side failed mid-run: tell the parent, then let the program run on unhooked. */
static void give_up(const char * reason) {
    if (connection >= 0) {
        notice(false, reason);
        disconnect();
    }
}

/* ---- selection ---- */

/* Splits the variable's value at the separator; the strings live as long as the process. */
static bool split_patterns(const char * variable, char *** patterns, size_t * count) {
    const char * text = getenv(variable);
    *patterns = NULL;
    *count = 0;
    if (text == NULL || *text == '\0') {
        return true;
    }
    size_t n = 1;
    for (const char * p = text; *p; p++) {
        n += *p == PATTERN_SEPARATOR;
    }
    char *  owned = strdup(text);
    char ** list = malloc(n * sizeof *list);
    if (owned == NULL || list == NULL) {
        free(owned);
        free(list);
        return false;
    }
    list[0] = owned;
    for (size_t i = 1; *owned; owned++) {
        if (*owned == PATTERN_SEPARATOR) {
            *owned = '\0';
            list[i++] = owned + 1;
        }
    }
    *patterns = list;
    *count = n;
    return true;
}

static bool parse_selection(char * reason, size_t size) {
    char ** texts;
    size_t  n_texts;
    if (!split_patterns("GGML_INSPECTOR_GLOBS", &selection.globs, &selection.n_globs) ||
        !split_patterns("GGML_INSPECTOR_REGEXES", &texts, &n_texts) ||
        (n_texts > 0 && (selection.regexes = calloc(n_texts, sizeof *selection.regexes)) == NULL)) {
        snprintf(reason, size, "out of memory reading the selection");
        return false;
    }
    for (size_t i = 0; i < n_texts; i++) {
        int error = regcomp(&selection.regexes[i], texts[i], REG_EXTENDED | REG_NOSUB);
        if (error != 0) {
            char message[256];
            regerror(error, &selection.regexes[i], message, sizeof message);
            snprintf(reason, size, "invalid regular expression '%.200s': %s", texts[i], message);
            return false;
        }
        selection.n_regexes = i + 1;
    }
    if (n_texts > 0) {
        free(texts[0]);
        free(texts);
    }
    selection.all = selection.n_globs == 0 && selection.n_regexes == 0;
    return true;
}

static bool parse_mode(char * reason, size_t size) {
    const char * requested = getenv("GGML_INSPECTOR_MODE");
    const char * bound = getenv("GGML_INSPECTOR_UNSPLIT_MAX_MIB");
    mode.unsplit = requested == NULL || *requested == '\0' || strcmp(requested, "unsplit") == 0;
    if (!mode.unsplit && strcmp(requested, "callback") != 0) {
        snprintf(reason, size, "GGML_INSPECTOR_MODE is '%.100s', not unsplit or callback", requested);
        return false;
    }
    mode.max_bytes = DEFAULT_UNSPLIT_MAX_MIB << 20;
    if (bound != NULL && *bound != '\0') {
        char *             end;
        unsigned long long mib = strtoull(bound, &end, 10);
        if (*end != '\0' || *bound == '-' || mib > (1ull << 40)) {
            snprintf(reason, size, "GGML_INSPECTOR_UNSPLIT_MAX_MIB is '%.100s', not a number of MiB", bound);
            return false;
        }
        mode.max_bytes = mib << 20;
    }
    return true;
}

static bool name_selected(const char * name) {
    if (selection.all) {
        return true;
    }
    for (size_t i = 0; i < selection.n_globs; i++) {
        if (fnmatch(selection.globs[i], name, 0) == 0) {
            return true;
        }
    }
    for (size_t i = 0; i < selection.n_regexes; i++) {
        if (regexec(&selection.regexes[i], name, 0, NULL, 0) == 0) {
            return true;
        }
    }
    return false;
}

/* Weights and llama.cpp's KV cache (cache_k_l0, cache_v_l0, cache_r/cache_s): what "select all" leaves
 * out when it meets them through a scheduler copy, which carries no input flag of its own. */
static bool is_model_state(const char * name) {
    size_t length = strlen(name);
    return (length >= 7 && strcmp(name + length - 7, ".weight") == 0) ||
           (length >= 5 && strcmp(name + length - 5, ".bias") == 0) || strncmp(name, "cache_", 6) == 0;
}

/* ---- names ---- */

/* Copies a tensor's name with a bound, so no read relies on ggml having NUL-terminated it. */
static size_t tensor_name(const struct ggml_tensor * t, char name[GGML_MAX_NAME]) {
    size_t length = strnlen(t->name, GGML_MAX_NAME - 1);
    memcpy(name, t->name, length);
    name[length] = '\0';
    return length;
}

/* When a consumer runs on another backend, the scheduler hands it a copy of its input named
 * "BACKEND#name#N" (^([^#]+)#(.+)#([0-9]+)$); on a match, *original is the middle part. */
static bool parse_sched_copy(const char * name, size_t length, const char ** original, size_t * original_length) {
    const char * first = memchr(name, '#', length);
    const char * last = memrchr(name, '#', length);
    if (first == NULL || first == name || last <= first + 1 || last + 1 == name + length) {
        return false;
    }
    for (const char * p = last + 1; p < name + length; p++) {
        if (*p < '0' || *p > '9') {
            return false;
        }
    }
    *original = first + 1;
    *original_length = (size_t) (last - first - 1);
    return true;
}

/* ---- per-evaluation tables: open addressing, cleared (not freed) at each evaluation ---- */

enum { SEEN_AS_NODE = 1, TAKEN_DIRECTLY = 2, TAKEN_THROUGH_COPY = 4 };

struct name_entry {
    char     name[GGML_MAX_NAME];
    uint32_t occurrences;
    uint8_t  marks;
    bool     used;
};

struct name_map {
    struct name_entry * slots;
    size_t              capacity, count;
};

/* Addresses seen in this evaluation, each with its occurrence under its name (NO_OCCURRENCE until one is
 * given): a captured node names its sources by (name, occurrence), as the Python hook does. */
#define NO_OCCURRENCE UINT32_MAX

struct address_set {
    const void ** slots;
    uint32_t *    occurrences;
    size_t        capacity, count;
};

static size_t hash_bytes(const void * data, size_t size) {
    const unsigned char * bytes = data;
    uint64_t hash = 0xcbf29ce484222325u;
    for (size_t i = 0; i < size; i++) {
        hash = (hash ^ bytes[i]) * 0x100000001b3u;
    }
    return (size_t) hash;
}

static struct name_entry * probe_name(struct name_entry * slots, size_t capacity, const char * name, size_t length) {
    size_t i = hash_bytes(name, length) & (capacity - 1);
    while (slots[i].used && !(strncmp(slots[i].name, name, length) == 0 && slots[i].name[length] == '\0')) {
        i = (i + 1) & (capacity - 1);
    }
    return &slots[i];
}

/* The entry for `name` (length < GGML_MAX_NAME), added if new; NULL when out of memory. */
static struct name_entry * name_entry(struct name_map * map, const char * name, size_t length) {
    if ((map->count + 1) * 2 > map->capacity) {
        size_t capacity = map->capacity ? map->capacity * 2 : 256;
        struct name_entry * slots = calloc(capacity, sizeof *slots);
        if (slots == NULL) {
            return NULL;
        }
        for (size_t i = 0; i < map->capacity; i++) {
            if (map->slots[i].used) {
                *probe_name(slots, capacity, map->slots[i].name, strlen(map->slots[i].name)) = map->slots[i];
            }
        }
        free(map->slots);
        map->slots = slots;
        map->capacity = capacity;
    }
    struct name_entry * entry = probe_name(map->slots, map->capacity, name, length);
    if (!entry->used) {
        memcpy(entry->name, name, length);
        entry->name[length] = '\0';
        entry->used = true;
        map->count++;
    }
    return entry;
}

static const void ** probe_address(const void ** slots, size_t capacity, const void * address) {
    size_t i = hash_bytes(&address, sizeof address) & (capacity - 1);
    while (slots[i] != NULL && slots[i] != address) {
        i = (i + 1) & (capacity - 1);
    }
    return &slots[i];
}

enum added { ADDED, PRESENT, NO_MEMORY };

static enum added add_address(struct address_set * set, const void * address) {
    if ((set->count + 1) * 2 > set->capacity) {
        size_t        capacity = set->capacity ? set->capacity * 2 : 256;
        const void ** slots = calloc(capacity, sizeof *slots);
        uint32_t *    occurrences = malloc(capacity * sizeof *occurrences);
        if (slots == NULL || occurrences == NULL) {
            free(slots);
            free(occurrences);
            return NO_MEMORY;
        }
        for (size_t i = 0; i < set->capacity; i++) {
            if (set->slots[i] != NULL) {
                const void ** moved = probe_address(slots, capacity, set->slots[i]);
                *moved = set->slots[i];
                occurrences[moved - slots] = set->occurrences[i];
            }
        }
        free(set->slots);
        free(set->occurrences);
        set->slots = slots;
        set->occurrences = occurrences;
        set->capacity = capacity;
    }
    const void ** slot = probe_address(set->slots, set->capacity, address);
    if (*slot != NULL) {
        return PRESENT;
    }
    *slot = address;
    set->occurrences[slot - set->slots] = NO_OCCURRENCE;
    set->count++;
    return ADDED;
}

static void note_occurrence(struct address_set * set, const void * address, uint32_t occurrence) {
    if (set->capacity > 0) {
        const void ** slot = probe_address(set->slots, set->capacity, address);
        if (*slot == address) {
            set->occurrences[slot - set->slots] = occurrence;
        }
    }
}

static uint32_t occurrence_of(const struct address_set * set, const void * address) {
    if (set->capacity == 0) {
        return NO_OCCURRENCE;
    }
    const void ** slot = probe_address(set->slots, set->capacity, address);
    return *slot == address ? set->occurrences[slot - set->slots] : NO_OCCURRENCE;
}

/* ---- schedulers ---- */

struct pending_leaf {
    struct ggml_tensor * tensor;
    char                 name[GGML_MAX_NAME]; /* the original's name when `tensor` is a scheduler copy */
    uint32_t             occurrence;
    bool                 through_copy;
};

/* A node of a graph computed in one piece that the plan could not keep: copied when computed, read after. */
struct held {
    const struct ggml_tensor * tensor;
    void *                     bytes;
    size_t                     capacity;
    bool                       filled;
};

struct scheduler {
    struct scheduler *               next;
    ggml_backend_sched_t             sched;
    int                              id;
    long long                        computes;
    ggml_backend_sched_eval_callback program; /* the program's own callback, chained in front of ours */
    void *                           program_data;
    /* The file name of the library that created the scheduler (libllama.so.0, libmtmd.so.0), if known:
     * it tells a language model's graphs from an image encoder's. */
    char                             library[128];

    /* The evaluation under way: each node and leaf is considered once, names count occurrences. */
    int                node_index;
    unsigned           inputs_sent; /* bit i: input_leafs[i] was sent in this evaluation */
    struct name_map    names;
    struct address_set seen;

    /* The unsplit mode: whether the scheduler was created where the hook saw it, how many reserves it saw,
     * whether the last one flagged the selected tensors, and the graph the last alloc flagged; `fallback`
     * says why a graph is captured by the callback instead. */
    bool                       names_sent;
    bool                       seen_created;
    int                        reserves;
    bool                       planned;
    const struct ggml_cgraph * flagged;
    const struct ggml_tensor * stopped_at;    /* where the program's callback stopped an unsplit compute */
    const struct ggml_tensor * program_asked; /* the node the program said yes to in an unsplit compute */
    char                       fallback[256];
    /* The nodes (indices) the last reserve let go over the bound, in a graph of planned_nodes nodes; the nodes of
     * the graph computed now that are read as they are computed, and their bytes. */
    int                        planned_nodes;
    int *                      unplanned;
    int                        n_unplanned, unplanned_capacity;
    struct held *              held;
    int                        n_held, held_capacity;

    /* The node last asked about: the scheduler observes that one only, and only after a yes. */
    struct {
        const struct ggml_tensor *       node;
        ggml_backend_sched_eval_callback program; /* set when the program said yes to it */
        void *                           program_data;
        int                              node_index;
        uint32_t                         occurrence;
        bool                             capture_node;
        int                              n_leafs;
        struct pending_leaf              leafs[GGML_MAX_SRC];
    } pending;
};

static struct scheduler * schedulers;

static bool eval_callback(struct ggml_tensor * t, bool ask, void * user_data);

/* The scheduler's record, adopted on first sight (created before we were active, or by a path we do
 * not interpose); NULL while the hook is off. */
static struct scheduler * watched(ggml_backend_sched_t sched) {
    if (connection < 0 || sched == NULL) {
        return NULL;
    }
    struct scheduler * s = schedulers;
    while (s != NULL && s->sched != sched) {
        s = s->next;
    }
    if (s == NULL) {
        if ((s = calloc(1, sizeof *s)) == NULL) {
            give_up("out of memory");
            return NULL;
        }
        s->sched = sched;
        s->id = n_schedulers++;
        s->next = schedulers;
        schedulers = s;
    }
    real.set_eval_callback(sched, eval_callback, s);
    return s;
}

static void forget(ggml_backend_sched_t sched) {
    for (struct scheduler ** link = &schedulers; *link != NULL; link = &(*link)->next) {
        struct scheduler * s = *link;
        if (s->sched == sched) {
            *link = s->next;
            free(s->names.slots);
            free(s->seen.slots);
            free(s->seen.occurrences);
            free(s->unplanned);
            for (int i = 0; i < s->held_capacity; i++) {
                free(s->held[i].bytes);
            }
            free(s->held);
            free(s);
            return;
        }
    }
}

/* Once per scheduler, with a selection: the distinct names of its first graph's nodes (NAMES), so that a pattern
 * that matched none of them can be told with the nearest names; nothing but selected tensors is sent otherwise. */
static void send_names(struct scheduler * s, struct ggml_cgraph * graph) {
    if (selection.all || s->names_sent || graph == NULL || gg.graph_node == NULL || gg.graph_n_nodes == NULL) {
        return;
    }
    s->names_sent = true;
    struct name_map distinct = {0};
    int             n = gg.graph_n_nodes(graph), listed = 0;
    json_begin();
    field_number("sched", s->id);
    put_key("names");
    put_text("[");
    for (int i = 0; i < n && listed < MAX_NAMES; i++) {
        char                name[GGML_MAX_NAME];
        size_t              length = tensor_name(gg.graph_node(graph, i), name);
        struct name_entry * entry = name_entry(&distinct, name, length);
        if (entry != NULL && entry->occurrences++ == 0) {
            separate();
            put_string(name);
            listed++;
        }
    }
    put_text("]");
    free(distinct.slots);
    send_head(NAMES, 0);
}

static void begin_evaluation(struct scheduler * s, struct ggml_cgraph * graph, bool unsplit) {
    s->node_index = 0;
    s->inputs_sent = 0;
    if (s->names.slots != NULL) {
        memset(s->names.slots, 0, s->names.capacity * sizeof *s->names.slots);
        s->names.count = 0;
    }
    if (s->seen.slots != NULL) {
        memset(s->seen.slots, 0, s->seen.capacity * sizeof *s->seen.slots);
        s->seen.count = 0;
    }
    json_begin();
    field_number("sched", s->id);
    field_number("compute", s->computes++);
    field_number("n_nodes", graph != NULL && gg.graph_n_nodes != NULL ? gg.graph_n_nodes(graph) : -1);
    field_string("library", s->library);
    field_string("mode", unsplit ? "unsplit" : "callback");
    if (!unsplit) {
        field_string("mode_reason", s->fallback);
    } else if (s->n_held > 0) {
        field_number("held", s->n_held); /* nodes the plan could not keep: read as computed */
    }
    n_computes++;
    send_head(EVAL, 0);
    send_names(s, graph);
}

/* ---- capture ---- */

/* The copy of `t` taken as it was computed, when the graph computed in one piece could not keep it. */
static struct held * held_of(const struct scheduler * s, const struct ggml_tensor * t) {
    for (int i = 0; i < s->n_held; i++) {
        if (s->held[i].tensor == t) {
            return &s->held[i];
        }
    }
    return NULL;
}

/* The tensor that holds `t`'s bytes now.  After a graph computed in one piece, a scheduler copy of an input
 * (RPC0#inp_pos#0) may have been overwritten once its split ran; the original, kept as an output, holds the
 * same bytes.  Anything else holds its own. */
static const struct ggml_tensor * data_of(const struct ggml_tensor * t) {
    if (unsplit_graph == NULL || t->op != GGML_OP_NONE) {
        return t;
    }
    char         raw[GGML_MAX_NAME];
    size_t       length = tensor_name(t, raw);
    const char * original;
    size_t       original_length;
    if (!parse_sched_copy(raw, length, &original, &original_length)) {
        return t;
    }
    char name[GGML_MAX_NAME];
    memcpy(name, original, original_length);
    name[original_length] = '\0';
    const struct ggml_tensor * held = gg.graph_get_tensor(unsplit_graph, name);
    return held != NULL && held->buffer != NULL && gg.nbytes(held) == gg.nbytes(t) ? held : t;
}

static bool reserve_copy(size_t size) {
    if (size <= copy.capacity) {
        return true;
    }
    void * bytes = malloc(size);
    if (bytes == NULL) {
        return false;
    }
    free(copy.bytes);
    copy.bytes = bytes;
    copy.capacity = size;
    return true;
}

/* Sends `t` (the node itself when `consumer` is NULL, else a leaf it consumes) as TENSOR, or as SKIP
 * with the reason when its buffer cannot be read.  The header also names the scheduler and compute:
 * threads computing on different schedulers interleave their frames on the one connection. */
static void put_source_details(const struct scheduler * s, const struct ggml_tensor * t);

/* The bytes `t` spans when it can be read back and sent (at most `limit`, which `limit_text` says in words), else
 * 0 with the reason in `why`. */
static size_t readable(const struct ggml_tensor * t, const char * buft_name, size_t limit, const char * limit_text,
                       char * why, size_t size) {
    ggml_backend_buffer_type_t   buft = t->buffer != NULL ? gg.buffer_get_type(t->buffer) : NULL;
    const struct buffer_mirror * head = (const struct buffer_mirror *) t->buffer;
    size_t                       nbytes = 0;
    if (t->buffer == NULL || t->data == NULL) {
        snprintf(why, size, "not allocated (no buffer or no data)");
    } else if (head->buft != (void *) buft) {
        snprintf(why, size, "unknown ggml_backend_buffer layout");
    } else if (head->get_tensor == NULL) {
        snprintf(why, size, "its buffer type %.200s cannot be read back", buft_name);
    } else if ((nbytes = gg.nbytes(t)) > limit) {
        snprintf(why, size, "too large (%zu bytes, at most %s are sent)", nbytes, limit_text);
    } else if (!reserve_copy(nbytes < COPY_CHUNK ? nbytes : COPY_CHUNK)) {
        snprintf(why, size, "out of memory for its copy");
    } else {
        return nbytes;
    }
    return 0;
}

/* After a frame head announcing them: `t`'s `nbytes` bytes, straight from its memory when its buffer is the host's
 * (one copy fewer: a vision graph's activations are gigabytes), else read back in pieces through the copy buffer. */
static void send_tensor_bytes(const struct ggml_tensor * t, size_t nbytes) {
    if (gg.buffer_is_host != NULL && gg.buffer_is_host(t->buffer)) {
        if (!send_all(t->data, nbytes)) {
            disconnect();
        }
        return;
    }
    for (size_t offset = 0; offset < nbytes;) {
        size_t part = nbytes - offset < copy.capacity ? nbytes - offset : copy.capacity;
        gg.tensor_get(t, copy.bytes, offset, part);
        if (!send_all(copy.bytes, part)) {
            disconnect();
            return;
        }
        offset += part;
    }
}

static void put_dims(const char * key, const int64_t * values) {
    put_key(key);
    put_text("[");
    for (int i = 0; i < GGML_MAX_DIMS; i++) {
        put_number((long long) values[i]);
    }
    put_text("]");
}

/* ---- KV-cache writes: the rows written, not the whole cache ---- */

/* A SET_ROWS node returns a view of the whole destination (llama.cpp's KV cache, n_ctx rows) of which this
 * evaluation wrote a few rows: sending the view whole would make a dump grow with the context, not the
 * tokens.  So the write is sent as the rows its row indices (src[1]) name, read at the write like the node
 * (the scheduler reuses their memory afterwards), as the Python hook does (inspector/capture/hook.py). */

static size_t row_bytes_of(const struct ggml_tensor * t) {
    return gg.type_size(t->type) * (size_t) (t->ne[0] / gg.blck_size(t->type));
}

/* The end of the run of consecutive rows of `written` that starts at index `i`. */
static size_t run_end(size_t i) {
    while (++i < written.count && written.rows[i] == written.rows[i - 1] + 1) {
    }
    return i;
}

static bool reserve_rows(size_t count) {
    if (count <= written.capacity) {
        return true;
    }
    int64_t * rows = malloc(count * sizeof *rows);
    if (rows == NULL) {
        return false;
    }
    free(written.rows);
    written.rows = rows;
    written.capacity = count;
    return true;
}

static size_t count_runs(void) {
    size_t runs = 0;
    for (size_t i = 0; i < written.count; i++) {
        runs += i == 0 || written.rows[i] != written.rows[i - 1] + 1;
    }
    return runs;
}

static int ascending(const void * a, const void * b) {
    int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
    return (x > y) - (x < y);
}

/* Whether `t` is a KV-cache write to send by its rows: a SET_ROWS into rows of whole blocks (ne[2] = ne[3] = 1),
 * whose i64 or i32 row indices can be read, at most one per destination row, each inside the destination,
 * in at most MAX_WRITTEN_RUNS runs.  If so `written` holds them; anything else is sent whole, as before. */
static bool read_written_rows(const struct ggml_tensor * t) {
    const struct ggml_tensor * indices = t->src[1] != NULL ? data_of(t->src[1]) : NULL;
    size_t                     width = indices != NULL && indices->type == GGML_TYPE_I32 ? 4 : 8;
    written.count = 0;
    if (indices == NULL || (indices->type != GGML_TYPE_I64 && indices->type != GGML_TYPE_I32) || t->ne[2] != 1 ||
        t->ne[3] != 1 || t->nb[0] != gg.type_size(t->type) || t->ne[0] % gg.blck_size(t->type) != 0 ||
        t->nb[1] < row_bytes_of(t)) {
        return false;
    }
    int64_t n = indices->ne[0] * indices->ne[1] * indices->ne[2] * indices->ne[3];
    char    why[512];
    if (n < 1 || n > t->ne[1] || readable(indices, "", MAX_TENSOR_BYTES, "", why, sizeof why) != (size_t) n * width ||
        !reserve_rows((size_t) n)) {
        return false;
    }
    gg.tensor_get(indices, written.rows, 0, (size_t) n * width);
    for (size_t i = (size_t) n; width == 4 && i-- > 0;) { /* widened in place, from the end */
        int32_t row;
        memcpy(&row, (const char *) written.rows + 4 * i, sizeof row);
        written.rows[i] = row;
    }
    for (int64_t i = 0; i < n; i++) {
        if (written.rows[i] < 0 || written.rows[i] >= t->ne[1]) {
            return false;
        }
    }
    written.count = (size_t) n;
    if (count_runs() > MAX_WRITTEN_RUNS) { /* a transposed V cache: one value per row, token by token */
        qsort(written.rows, written.count, sizeof *written.rows, ascending);
    }
    if (count_runs() > MAX_WRITTEN_RUNS) {
        written.count = 0;
    }
    return written.count > 0;
}

/* The header fields of a write sent by its rows: its runs of rows as [first, count] in the order written, and
 * the destination's ne (the layout sent is put_layout's). */
static void put_rows_written(const struct ggml_tensor * t) {
    put_key("rows_written");
    put_text("[");
    for (size_t i = 0, end; i < written.count; i = end) {
        end = run_end(i);
        separate();
        put_text("[");
        put_number((long long) written.rows[i]);
        put_number((long long) (end - i));
        put_text("]");
    }
    put_text("]");
    put_dims("written_of_ne", t->ne);
}

/* `size` bytes of `t` from `offset` into the copy buffer, which is sent whenever it is full: a write's rows go out
 * in pieces of the buffer's size, however small its rows (a transposed V cache's are one value). */
static bool gather(const struct ggml_tensor * t, size_t offset, size_t size) {
    while (size > 0) {
        if (copy.filled == copy.capacity) {
            if (!send_all(copy.bytes, copy.filled)) {
                return false;
            }
            copy.filled = 0;
        }
        size_t part = size < copy.capacity - copy.filled ? size : copy.capacity - copy.filled;
        gg.tensor_get(t, (char *) copy.bytes + copy.filled, offset, part);
        copy.filled += part;
        offset += part;
        size -= part;
    }
    return true;
}

/* After a frame head announcing them: the rows of `written`, one after another; one read per run of rows when
 * the destination's rows are packed, else one per row. */
static void send_written_rows(const struct ggml_tensor * t) {
    size_t row_bytes = row_bytes_of(t);
    bool   packed = t->nb[1] == row_bytes;
    bool   sent = true;
    copy.filled = 0;
    for (size_t i = 0, end; i < written.count && sent; i = end) {
        end = run_end(i);
        for (size_t row = i; row < (packed ? i + 1 : end) && sent; row++) {
            sent = gather(t, (size_t) written.rows[row] * t->nb[1], packed ? (end - i) * row_bytes : row_bytes);
        }
    }
    if (!sent || !send_all(copy.bytes, copy.filled)) {
        disconnect();
    }
}

/* ne, nb and n_dims as sent: the tensor's own, or for a write sent by its rows, those rows one after another (what
 * inspector/ggml/readout.py's written_layout makes of them). */
static void put_layout(const struct ggml_tensor * t, bool by_rows) {
    int64_t ne[GGML_MAX_DIMS], nb[GGML_MAX_DIMS];
    int     n_dims = gg.n_dims(t);
    for (int i = 0; i < GGML_MAX_DIMS; i++) {
        ne[i] = t->ne[i];
        nb[i] = (int64_t) t->nb[i];
    }
    if (by_rows) {
        ne[1] = (int64_t) written.count;
        nb[1] = (int64_t) row_bytes_of(t);
        nb[2] = nb[3] = nb[1] * ne[1];
        n_dims = n_dims < 2 ? 2 : n_dims;
    }
    put_dims("ne", ne);
    put_dims("nb", nb);
    field_number("n_dims", n_dims);
}

/* Whether `t` (nbytes spanned) is sent as its rows, packed: see MAX_PACKED_ROWS; inspector/ggml/readout.py's
 * packed_rows decides alike. */
static bool sent_packed(const struct ggml_tensor * t, size_t nbytes) {
    int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    return t->nb[0] == gg.type_size(t->type) && t->ne[0] % gg.blck_size(t->type) == 0 && rows > 0 &&
           rows <= MAX_PACKED_ROWS && 2 * row_bytes_of(t) * (size_t) rows < nbytes;
}

/* After a frame head announcing them: `t`'s rows one after another (sent_packed). */
static void send_packed_rows(const struct ggml_tensor * t) {
    size_t row_bytes = row_bytes_of(t);
    bool   sent = true;
    copy.filled = 0;
    for (int64_t i3 = 0; i3 < t->ne[3] && sent; i3++) {
        for (int64_t i2 = 0; i2 < t->ne[2] && sent; i2++) {
            for (int64_t i1 = 0; i1 < t->ne[1] && sent; i1++) {
                sent = gather(t, (size_t) i1 * t->nb[1] + (size_t) i2 * t->nb[2] + (size_t) i3 * t->nb[3], row_bytes);
            }
        }
    }
    if (!sent || !send_all(copy.bytes, copy.filled)) {
        disconnect();
    }
}

static void capture(const struct scheduler * s, struct ggml_tensor * t, const char * name, int node_index,
                    uint32_t occurrence, const char * consumer, bool through_copy) {
    if (connection < 0) {
        return;
    }
    ggml_backend_buffer_type_t buft = t->buffer != NULL ? gg.buffer_get_type(t->buffer) : NULL;
    const char *               buft_name = buft != NULL ? gg.buft_name(buft) : "";
    const struct ggml_tensor * holder = consumer != NULL ? data_of(t) : t;
    struct held *              held = consumer == NULL ? held_of(s, t) : NULL;
    char                       why[512] = "";
    size_t                     nbytes = readable(holder, buft_name, MAX_TENSOR_BYTES, "8 GiB", why, sizeof why);
    if (held != NULL && !held->filled && why[0] == '\0') {
        snprintf(why, sizeof why, "held to be read as computed, but the scheduler never computed it");
    }
    json_begin();
    field_number("sched", s->id);
    field_number("compute", s->computes - 1);
    field_string("name", name);
    field_number("node_index", node_index);
    field_number("occurrence", occurrence);
    if (why[0] != '\0') {
        char reason[sizeof why + GGML_MAX_NAME + 16];
        snprintf(reason, sizeof reason, "tensor '%s': %s", name, why);
        field_string("buffer_type", buft_name);
        field_string("reason", reason);
        send_head(SKIP, 0);
        return;
    }
    char raw_name[GGML_MAX_NAME];
    tensor_name(t, raw_name);
    bool by_rows = consumer == NULL && t->op == GGML_OP_SET_ROWS && read_written_rows(t);
    bool packed = !by_rows && held == NULL && sent_packed(holder, nbytes);
    if (by_rows) {
        nbytes = written.count * row_bytes_of(t);
        put_rows_written(t);
    } else if (packed) { /* the strides of the rows as sent; nb stays the graph's */
        size_t  row_bytes = row_bytes_of(holder);
        int64_t sent_nb[GGML_MAX_DIMS] = {(int64_t) gg.type_size(holder->type), (int64_t) row_bytes,
                                          (int64_t) row_bytes * holder->ne[1],
                                          (int64_t) row_bytes * holder->ne[1] * holder->ne[2]};
        nbytes = row_bytes * (size_t) (holder->ne[1] * holder->ne[2] * holder->ne[3]);
        put_dims("sent_nb", sent_nb);
    }
    field_string("op", gg.op_desc(t));
    field_number("type", t->type);
    field_string("type_name", gg.type_name(t->type));
    put_layout(t, by_rows);
    field_number("block_size", gg.blck_size(t->type));
    field_number("type_size", (long long) gg.type_size(t->type));
    field_string("buffer", gg.buffer_name(t->buffer));
    field_string("buffer_type", buft_name);
    field_bool("is_leaf", consumer != NULL);
    field_string("consumer", consumer != NULL ? consumer : "");
    field_string("sched_copy", through_copy ? raw_name : "");
    field_number("flags", t->flags);
    put_key("sources");
    put_text("[");
    for (int i = 0; i < GGML_MAX_SRC; i++) {
        if (t->src[i] != NULL) {
            char source[GGML_MAX_NAME];
            tensor_name(t->src[i], source);
            separate();
            put_string(source);
        }
    }
    put_text("]");
    put_source_details(s, t);
    field_number("op_code", t->op);
    put_key("op_params");
    put_text("[");
    int last_word = GGML_MAX_OP_PARAMS / (int) sizeof(int32_t);
    while (last_word > 0 && t->op_params[last_word - 1] == 0) {
        last_word--;
    }
    for (int i = 0; i < last_word; i++) {
        put_number(t->op_params[i]);
    }
    put_text("]");
    char view_source[GGML_MAX_NAME] = "";
    if (t->view_src != NULL) {
        tensor_name(t->view_src, view_source);
    }
    field_string("view_source", view_source);
    field_number("view_offset", (long long) t->view_offs);
    bool lent = lending && !by_rows && !packed && held == NULL && nbytes >= LEND_MIN_BYTES &&
                gg.buffer_is_host != NULL && gg.buffer_is_host(holder->buffer);
    if (lent) {
        field_number("lent_at", (long long) (uintptr_t) holder->data);
        field_number("lent_bytes", (long long) nbytes);
        if (send_head(TENSOR, 0)) {
            wait_until_copied();
        }
        return;
    }
    if (send_head(TENSOR, nbytes)) {
        if (by_rows) {
            send_written_rows(t);
        } else if (held != NULL) {
            if (!send_all(held->bytes, nbytes)) {
                disconnect();
            }
        } else if (packed) {
            send_packed_rows(holder);
        } else {
            send_tensor_bytes(holder, nbytes);
        }
    }
}

/* If `src` (a leaf, or a scheduler copy of one) is one of llama.cpp's input leafs not yet sent in this
 * evaluation, sends it as INPUT: its name, type and shape, and its bytes (or why they are left out).  Only
 * for a consumer ggml computes (GGML_TENSOR_FLAG_COMPUTE): llama.cpp builds both inp_tokens and inp_embd and
 * sets only the one ggml_build_forward_select chose, whose consumers alone carry the flag.  Read at the
 * ask phase: the program set the inputs before compute, and the scheduler has copied them to this split. */
static void send_input(struct scheduler * s, const struct ggml_tensor * src) {
    if (src->op != GGML_OP_NONE) {
        return;
    }
    const struct ggml_tensor * holder = data_of(src);
    char         raw[GGML_MAX_NAME];
    size_t       length = tensor_name(src, raw);
    const char * name = raw;
    size_t       name_length = length;
    parse_sched_copy(raw, length, &name, &name_length);
    size_t which = 0;
    while (which < N_INPUT_LEAFS &&
           (strlen(input_leafs[which]) != name_length || strncmp(input_leafs[which], name, name_length) != 0)) {
        which++;
    }
    if (which == N_INPUT_LEAFS || (s->inputs_sent & (1u << which))) {
        return;
    }
    s->inputs_sent |= 1u << which;
    bool   embd = strstr(input_leafs[which], "embd") != NULL;
    char   why[512] = "";
    size_t nbytes = 0;
    if (src->ne[0] * src->ne[1] * src->ne[2] * src->ne[3] == 0) {
        /* nothing to read (no output rows in this ubatch), and perhaps no memory behind it */
    } else if (src->type != (embd ? GGML_TYPE_F32 : GGML_TYPE_I32)) {
        snprintf(why, sizeof why, "of type %s, not %s", gg.type_name(src->type), embd ? "f32" : "i32");
    } else if (!embd && src->ne[0] * src->ne[1] * src->ne[2] * src->ne[3] > MAX_INPUT_VALUES) {
        snprintf(why, sizeof why, "more than %lld values", (long long) MAX_INPUT_VALUES);
    } else {
        ggml_backend_buffer_type_t buft = holder->buffer != NULL ? gg.buffer_get_type(holder->buffer) : NULL;
        nbytes = readable(holder, buft != NULL ? gg.buft_name(buft) : "", embd ? MAX_INPUT_EMBD_BYTES : MAX_TENSOR_BYTES,
                          embd ? "64 MiB" : "8 GiB", why, sizeof why);
    }
    json_begin();
    field_number("sched", s->id);
    field_number("compute", s->computes - 1);
    field_string("name", input_leafs[which]);
    field_number("type", src->type);
    put_dims("ne", src->ne);
    if (why[0] != '\0') {
        field_string("omitted", why);
        nbytes = 0;
    }
    if (send_head(INPUT, nbytes)) {
        send_tensor_bytes(holder, nbytes);
    }
}

/* Per source, in src[] order: the (name, occurrence) it is paired by in this evaluation (-1 when never seen:
 * a weight), where it lived and its type; compare's origins read these (record field source_details). */
static void put_source_details(const struct scheduler * s, const struct ggml_tensor * t) {
    put_key("source_details");
    put_text("[");
    for (int i = 0; i < GGML_MAX_SRC; i++) {
        const struct ggml_tensor * src = t->src[i];
        if (src == NULL) {
            continue;
        }
        char         raw[GGML_MAX_NAME];
        size_t       length = tensor_name(src, raw);
        const char * original;
        size_t       original_length;
        char         name[GGML_MAX_NAME];
        if (parse_sched_copy(raw, length, &original, &original_length)) {
            memcpy(name, original, original_length);
            name[original_length] = '\0';
        } else {
            memcpy(name, raw, length + 1);
        }
        long long occurrence = -1;
        uint32_t  seen = occurrence_of(&s->seen, src);
        if (seen != NO_OCCURRENCE) {
            occurrence = seen;
        } else if (s->names.capacity > 0) {
            /* A scheduler copy of a node: the latest node of that name. */
            struct name_entry * entry = probe_name(s->names.slots, s->names.capacity, name, strlen(name));
            if (entry->used && entry->occurrences > 0 && name[0] != '\0' && strcmp(name, raw) != 0) {
                occurrence = (long long) entry->occurrences - 1;
            }
        }
        ggml_backend_buffer_type_t buft = src->buffer != NULL ? gg.buffer_get_type(src->buffer) : NULL;
        separate();
        put_text("{");
        field_string("name", name);
        field_number("occurrence", occurrence);
        field_string("buffer", src->buffer != NULL ? gg.buffer_name(src->buffer) : "");
        field_string("buffer_type", buft != NULL ? gg.buft_name(buft) : "");
        field_string("type", gg.type_name(src->type));
        field_number("slot", i);
        put_text("}");
    }
    put_text("]");
}

/* Sends `t` (a node, or a leaf read by the node asked about) as skipped, with the reason. */
static void skip_leaf(const struct scheduler * s, const struct ggml_tensor * t, const char * name, uint32_t occurrence,
                      const char * reason) {
    ggml_backend_buffer_type_t buft = t->buffer != NULL ? gg.buffer_get_type(t->buffer) : NULL;
    json_begin();
    field_number("sched", s->id);
    field_number("compute", s->computes - 1);
    field_string("name", name);
    field_number("node_index", s->pending.node_index);
    field_number("occurrence", occurrence);
    field_string("buffer_type", buft != NULL ? gg.buft_name(buft) : "");
    field_string("reason", reason);
    send_head(SKIP, 0);
}

static void skip_node(const struct scheduler * s, const struct ggml_tensor * t, const char * name, const char * reason) {
    skip_leaf(s, t, name, s->pending.occurrence, reason);
}

/* Whether `src` is a leaf met for the first time in this evaluation, not covered yet, and selected; if
 * so, *leaf describes it.  A scheduler copy stands for its original and is taken under the original's
 * name, once, and not at all when the original is a node (captured where it was computed) or was
 * taken directly: so runs at any offload count hold the same tensors. */
static bool take_leaf(struct scheduler * s, struct ggml_tensor * src, struct pending_leaf * leaf) {
    char         raw[GGML_MAX_NAME];
    size_t       length = tensor_name(src, raw);
    const char * original;
    size_t       original_length;
    bool         through_copy = parse_sched_copy(raw, length, &original, &original_length);
    if (src->op != GGML_OP_NONE && !through_copy) {
        return false;
    }
    enum added added = add_address(&s->seen, src);
    if (added == PRESENT) {
        return false;
    }
    struct name_entry * entry = added == NO_MEMORY ? NULL
                              : through_copy       ? name_entry(&s->names, original, original_length)
                                                   : name_entry(&s->names, raw, length);
    if (entry == NULL) {
        give_up("out of memory");
        return false;
    }
    uint8_t covering = through_copy ? SEEN_AS_NODE | TAKEN_DIRECTLY | TAKEN_THROUGH_COPY : TAKEN_THROUGH_COPY;
    if (entry->marks & covering) {
        return false;
    }
    entry->marks |= through_copy ? TAKEN_THROUGH_COPY : TAKEN_DIRECTLY;
    uint32_t occurrence = entry->occurrences++;
    note_occurrence(&s->seen, src, occurrence);
    bool is_input = through_copy ? !is_model_state(entry->name) : (src->flags & GGML_TENSOR_FLAG_INPUT) != 0;
    if (!(selection.all ? is_input : name_selected(entry->name))) {
        return false;
    }
    if (strncmp(entry->name, "cache_", 6) == 0 && strchr(entry->name, ' ') == NULL) {
        skip_leaf(s, src, entry->name, occurrence, WHOLE_CACHE_LEAF_REASON);
        return false;
    }
    leaf->tensor = src;
    memcpy(leaf->name, entry->name, sizeof leaf->name);
    leaf->occurrence = occurrence;
    leaf->through_copy = through_copy;
    return true;
}


/* True, and sent as skipped, for llama.cpp's whole KV cache reshaped (a RESHAPE of a cache_* leaf, as large as it):
 * without flash attention llama.cpp reshapes the whole transposed V cache into a column to write into it, n_ctx
 * rows at every evaluation, which the writes' rows already hold.  The views attention reads, over the cells in
 * use, are kept.  As the Python hook decides (inspector/capture/hook.py). */
static bool whole_cache_view(const struct scheduler * s, const struct ggml_tensor * t, const char * name) {
    char source[GGML_MAX_NAME] = "";
    if (t->view_src != NULL) {
        tensor_name(t->view_src, source);
    }
    if (strncmp(source, "cache_", 6) != 0 || strchr(source, ' ') != NULL || gg.nbytes(t) < gg.nbytes(t->view_src)) {
        return false;
    }
    skip_node(s, t, name, WHOLE_CACHE_REASON);
    return true;
}

/* The ask phase for node `t`: counts it and decides whether we want it or a new leaf among its sources. */
static bool ask_about(struct scheduler * s, const struct ggml_tensor * t) {
    s->pending.node = t;
    s->pending.node_index = s->node_index++;
    s->pending.capture_node = false;
    s->pending.n_leafs = 0;
    if (connection < 0) {
        return false;
    }
    char                name[GGML_MAX_NAME];
    size_t              length = tensor_name(t, name);
    struct name_entry * entry = name_entry(&s->names, name, length);
    if (entry == NULL || add_address(&s->seen, t) == NO_MEMORY) {
        give_up("out of memory");
        return false;
    }
    entry->marks |= SEEN_AS_NODE;
    s->pending.occurrence = entry->occurrences++;
    note_occurrence(&s->seen, t, s->pending.occurrence);
    /* A node ggml does not compute (llama.cpp builds the token and the embeddings path, and ggml_build_forward_select
     * flags one) holds whatever its memory held: it and the leafs only it reads are not captured. */
    bool computed = (t->flags & GGML_TENSOR_FLAG_COMPUTE) != 0;
    if (name_selected(name)) {
        if (!computed) {
            skip_node(s, t, name, NOT_COMPUTED_REASON);
        } else {
            s->pending.capture_node = !(t->op == GGML_OP_RESHAPE && whole_cache_view(s, t, name));
        }
    }
    for (int i = 0; i < GGML_MAX_SRC && connection >= 0 && computed; i++) {
        if (t->src[i] != NULL) {
            send_input(s, t->src[i]);
        }
        if (t->src[i] != NULL && connection >= 0 && take_leaf(s, t->src[i], &s->pending.leafs[s->pending.n_leafs])) {
            s->pending.n_leafs++;
        }
    }
    return connection >= 0 && (s->pending.capture_node || s->pending.n_leafs > 0);
}

/* The observe phase: the node has just been computed and its backend synchronised, so its data and its
 * sources' are valid now, before the scheduler reuses the memory. */
static void observe(struct scheduler * s, struct ggml_tensor * t) {
    char consumer[GGML_MAX_NAME];
    tensor_name(t, consumer);
    for (int i = 0; i < s->pending.n_leafs; i++) {
        struct pending_leaf * leaf = &s->pending.leafs[i];
        capture(s, leaf->tensor, leaf->name, s->pending.node_index, leaf->occurrence, consumer, leaf->through_copy);
    }
    if (s->pending.capture_node) {
        capture(s, t, consumer, s->pending.node_index, s->pending.occurrence, NULL, false);
    }
}

/* ---- the unsplit mode (preloaded only: linked, the hook sees no plan or alloc) ---- */

#ifndef GGML_INSPECTOR_LINKED

/* The tensors the last plan flagged as outputs, to take the flags back, and for each its node index in the graph
 * (-1: a leaf, or the source a selected view reads) and the bytes it keeps. */
struct kept_tensor {
    struct ggml_tensor * tensor;
    int                  node_index;
    unsigned long long   bytes;
};

static struct {
    struct kept_tensor * tensors;
    size_t               count, capacity;
} kept;

static bool is_view_op(enum ggml_op op) {
    return op == GGML_OP_NONE || op == GGML_OP_VIEW || op == GGML_OP_RESHAPE || op == GGML_OP_PERMUTE ||
           op == GGML_OP_TRANSPOSE;
}

static unsigned long long add_bytes(unsigned long long a, unsigned long long b) {
    return a > ULLONG_MAX - b ? ULLONG_MAX : a + b;
}

/* Flags `t` as an output when the allocator places it (no buffer yet) and nothing did already; returns the
 * bytes it will keep (none for a view: its source is kept instead). */
static unsigned long long keep(struct ggml_tensor * t, int node_index) {
    if (t->buffer != NULL || (t->flags & GGML_TENSOR_FLAG_OUTPUT)) {
        return 0;
    }
    if (kept.count == kept.capacity) {
        size_t               capacity = kept.capacity ? 2 * kept.capacity : 4096;
        struct kept_tensor * grown = realloc(kept.tensors, capacity * sizeof *grown);
        if (grown == NULL) {
            return ULLONG_MAX;
        }
        kept.tensors = grown;
        kept.capacity = capacity;
    }
    unsigned long long bytes = t->view_src != NULL ? 0 : gg.nbytes(t);
    kept.tensors[kept.count++] = (struct kept_tensor) {t, node_index, bytes};
    t->flags |= GGML_TENSOR_FLAG_OUTPUT;
    return bytes;
}

/* Flags what must outlive the compute to be read after it: every selected node (and the node a selected view
 * reads), and the leafs the allocator places that are inputs or selected (token ids, positions, a KV-cache
 * write's row indices: leafs are freed after their last consumer too).  Returns the bytes kept, an upper bound
 * of what the compute buffers grow by. */
static unsigned long long keep_selected(struct ggml_cgraph * graph) {
    unsigned long long bytes = 0;
    int                n = gg.graph_n_nodes(graph);
    kept.count = 0;
    for (int i = 0; i < n; i++) {
        struct ggml_tensor * t = gg.graph_node(graph, i);
        char                 name[GGML_MAX_NAME];
        tensor_name(t, name);
        if (name_selected(name)) {
            bytes = add_bytes(bytes, keep(t, i));
            if (t->view_src != NULL && t->view_src->op != GGML_OP_NONE) {
                bytes = add_bytes(bytes, keep(t->view_src, -1));
            }
        }
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            struct ggml_tensor * src = t->src[j];
            if (src != NULL && src->op == GGML_OP_NONE && src->view_src == NULL) {
                tensor_name(src, name);
                if ((src->flags & GGML_TENSOR_FLAG_INPUT) || name_selected(name)) {
                    bytes = add_bytes(bytes, keep(src, -1));
                }
            }
        }
    }
    return bytes;
}

static void take_back_flags(void) {
    for (size_t i = 0; i < kept.count; i++) {
        kept.tensors[i].tensor->flags &= ~GGML_TENSOR_FLAG_OUTPUT;
    }
    kept.count = 0;
}

static int by_bytes_descending(const void * a, const void * b) {
    unsigned long long x = ((const struct kept_tensor *) a)->bytes, y = ((const struct kept_tensor *) b)->bytes;
    return (x < y) - (x > y);
}

/* Over the bound, the largest selected nodes are let go (their flags taken back) until the rest fits: those are
 * read as they are computed instead.  Each one let go is passed to `let_go` with its node index; returns the
 * bytes still kept. */
static unsigned long long let_go_largest(unsigned long long bytes, void (*let_go)(struct scheduler *, int),
                                         struct scheduler * s) {
    qsort(kept.tensors, kept.count, sizeof *kept.tensors, by_bytes_descending);
    for (size_t i = 0; i < kept.count && bytes > mode.max_bytes; i++) {
        struct kept_tensor * k = &kept.tensors[i];
        if (k->node_index >= 0 && k->bytes > 0 && (k->tensor->flags & GGML_TENSOR_FLAG_OUTPUT)) {
            k->tensor->flags &= ~GGML_TENSOR_FLAG_OUTPUT;
            bytes -= k->bytes;
            let_go(s, k->node_index);
        }
    }
    return bytes;
}

static bool grow_ints(int ** values, int * capacity, int count) {
    if (count < *capacity) {
        return true;
    }
    int   grown_capacity = *capacity ? 2 * *capacity : 64;
    int * grown = realloc(*values, (size_t) grown_capacity * sizeof *grown);
    if (grown == NULL) {
        return false;
    }
    *values = grown;
    *capacity = grown_capacity;
    return true;
}

/* At reserve: the node let go is one the plan will not keep, in this graph and in every graph that reuses its plan. */
static void unplanned(struct scheduler * s, int node_index) {
    if (grow_ints(&s->unplanned, &s->unplanned_capacity, s->n_unplanned)) {
        s->unplanned[s->n_unplanned++] = node_index;
    }
}

/* At alloc: the node let go is read as it is computed, into memory of ours, until the graph is read. */
static void hold(struct scheduler * s, int node_index) {
    if (s->n_held == s->held_capacity) {
        int           capacity = s->held_capacity ? 2 * s->held_capacity : 64;
        struct held * grown = realloc(s->held, (size_t) capacity * sizeof *grown);
        if (grown == NULL) {
            return;
        }
        memset(grown + s->held_capacity, 0, (size_t) (capacity - s->held_capacity) * sizeof *grown);
        s->held = grown;
        s->held_capacity = capacity;
    }
    s->held[s->n_held].tensor = gg.graph_node((struct ggml_cgraph *) s->flagged, node_index);
    s->held[s->n_held].filled = false;
    s->n_held++;
}

/* A node that writes into another computed node in place (an *_inplace op, a copy into a node's view): read after
 * the compute, that node would hold the later value.  Writes into leafs (the KV cache) are fine. */
static bool written_in_place(struct ggml_cgraph * graph, char * why, size_t size) {
    int n = gg.graph_n_nodes(graph);
    for (int i = 0; i < n; i++) {
        const struct ggml_tensor * t = gg.graph_node(graph, i);
        if (t->view_src != NULL && t->view_src->op != GGML_OP_NONE && !is_view_op(t->op)) {
            char name[GGML_MAX_NAME], target[GGML_MAX_NAME];
            tensor_name(t, name);
            tensor_name(t->view_src, target);
            snprintf(why, size, "%s (%s) writes into %s in place", name, gg.op_desc(t), target);
            return true;
        }
    }
    return false;
}

static unsigned long long mib(unsigned long long bytes) {
    return bytes == ULLONG_MAX ? ULLONG_MAX >> 20 : (bytes + (1ull << 20) - 1) >> 20;
}

/* At reserve: flags the selected tensors of the largest graph to come, letting the largest go while the rest
 * passes the bound; planned false, with the reason, when even the inputs do not fit. */
static void plan_reserve(struct scheduler * s, struct ggml_cgraph * graph, char * why, size_t size) {
    s->n_unplanned = 0;
    s->planned_nodes = gg.graph_n_nodes(graph);
    unsigned long long bytes = keep_selected(graph);
    if (bytes > mode.max_bytes) {
        bytes = let_go_largest(bytes, unplanned, s);
    }
    if (bytes > mode.max_bytes) {
        take_back_flags();
        s->n_unplanned = 0;
        snprintf(why, size, "keeping the graph inputs alone would take up to %llu MiB of compute buffer, over the "
                 "bound of %llu MiB (GGML_INSPECTOR_UNSPLIT_MAX_MIB)", mib(bytes), mode.max_bytes >> 20);
        return;
    }
    s->planned = true;
}

/* At alloc: flags the graph's selected tensors; those the plan did not keep (its node indices, when the graph reuses
 * the plan: the same number of nodes) and those past the bound are held instead, read as computed.  Falls back,
 * with the reason, when the held tensors themselves would pass the bound. */
static void plan_alloc(struct scheduler * s, struct ggml_cgraph * graph, char * why, size_t size) {
    unsigned long long bytes = keep_selected(graph);
    s->flagged = graph;
    s->n_held = 0;
    if (gg.graph_n_nodes(graph) == s->planned_nodes) {
        for (int i = 0; i < s->n_unplanned; i++) {
            struct ggml_tensor * t = gg.graph_node(graph, s->unplanned[i]);
            for (size_t k = 0; k < kept.count; k++) {
                if (kept.tensors[k].tensor == t && (t->flags & GGML_TENSOR_FLAG_OUTPUT)) {
                    t->flags &= ~GGML_TENSOR_FLAG_OUTPUT;
                    bytes -= kept.tensors[k].bytes;
                    hold(s, s->unplanned[i]);
                }
            }
        }
    }
    if (bytes > mode.max_bytes) {
        bytes = let_go_largest(bytes, hold, s);
    }
    /* A view of a held node reads memory the plan does not keep either: it is held too (read as it is computed,
     * its source is alive then).  Views come after their source. */
    int n = s->n_held > 0 ? gg.graph_n_nodes(graph) : 0;
    for (int i = 0; i < n; i++) {
        const struct ggml_tensor * t = gg.graph_node(graph, i);
        if (t->view_src != NULL && held_of(s, t->view_src) != NULL && held_of(s, t) == NULL) {
            hold(s, i);
        }
    }
    unsigned long long held = 0;
    for (int i = 0; i < s->n_held; i++) {
        held = add_bytes(held, gg.nbytes(s->held[i].tensor));
    }
    if (bytes > mode.max_bytes || held > mode.max_bytes) {
        take_back_flags();
        s->flagged = NULL;
        s->n_held = 0;
        snprintf(why, size, "keeping the selected tensors would take up to %llu MiB of compute buffer and memory, "
                 "over the bound of %llu MiB (GGML_INSPECTOR_UNSPLIT_MAX_MIB)", mib(add_bytes(bytes, held)),
                 mode.max_bytes >> 20);
    }
}

/* Before the scheduler plans (reserving) or allocates `graph`: flags the tensors to keep, or says in
 * s->fallback why the graph will be captured by the callback. */
static void plan_unsplit(struct scheduler * s, struct ggml_cgraph * graph, bool reserving) {
    char why[sizeof s->fallback] = "";
    s->flagged = NULL;
    s->n_held = 0;
    if (reserving) {
        s->reserves++;
        s->planned = false;
    }
    if (!mode.unsplit) {
        snprintf(why, sizeof why, "the per-node callback was asked for (GGML_INSPECTOR_MODE=callback)");
    } else if (gg.graph_node == NULL || gg.graph_get_tensor == NULL || gg.graph_n_nodes == NULL) {
        snprintf(why, sizeof why, "the program's ggml lacks ggml_graph_node or ggml_graph_get_tensor");
    } else if (reserving) {
        plan_reserve(s, graph, why, sizeof why);
    } else if (s->reserves > 0 ? !s->planned : !s->seen_created) {
        snprintf(why, sizeof why, "%s", s->fallback[0] != '\0' ? s->fallback
                                        : "the scheduler's buffers were planned where the hook could not see");
    } else if (!written_in_place(graph, why, sizeof why)) {
        plan_alloc(s, graph, why, sizeof why);
    }
    if (why[0] != '\0' || reserving) {
        memcpy(s->fallback, why, sizeof why);
    }
}

/* Whether `graph`, about to be computed, is the one the last alloc flagged and still carries the flags (a graph
 * rebuilt at the same address without an alloc the hook saw does not). */
static bool computes_unsplit(struct scheduler * s, struct ggml_cgraph * graph) {
    if (s->flagged != graph || graph == NULL) {
        if (s->fallback[0] == '\0') {
            snprintf(s->fallback, sizeof s->fallback, "the graph was not allocated where the hook could see");
        }
        return false;
    }
    int n = gg.graph_n_nodes(graph);
    for (int i = 0; i < n; i++) {
        const struct ggml_tensor * t = gg.graph_node(graph, i);
        char                       name[GGML_MAX_NAME];
        tensor_name(t, name);
        if (!(t->flags & GGML_TENSOR_FLAG_OUTPUT) && name_selected(name) && held_of(s, t) == NULL) {
            snprintf(s->fallback, sizeof s->fallback, "%s lost its output flag after the alloc", name);
            return false;
        }
    }
    return true;
}

/* The eval callback of a graph computed in one piece: splits it only where the program asks (its callback, whose
 * answers are honoured) and where a held tensor is computed (copied now, read with the rest after). */
static bool unsplit_callback(struct ggml_tensor * t, bool ask, void * user_data) {
    struct scheduler * s = user_data;
    pthread_mutex_lock(&lock);
    ggml_backend_sched_eval_callback program = s->program;
    void *                           program_data = s->program_data;
    struct held *                    held = held_of(s, t);
    bool                             program_asked = s->program_asked == t;
    pthread_mutex_unlock(&lock);
    if (ask) {
        bool program_wants = program != NULL && program(t, true, program_data);
        pthread_mutex_lock(&lock);
        s->program_asked = program_wants ? t : NULL;
        pthread_mutex_unlock(&lock);
        return program_wants || held != NULL;
    }
    if (held != NULL) {
        pthread_mutex_lock(&lock);
        size_t nbytes = gg.nbytes(t);
        void * bytes = nbytes <= held->capacity ? held->bytes : realloc(held->bytes, nbytes);
        if (bytes != NULL) {
            gg.tensor_get(t, bytes, 0, nbytes);
            held->bytes = bytes;
            held->capacity = nbytes > held->capacity ? nbytes : held->capacity;
            held->filled = true;
        }
        pthread_mutex_unlock(&lock);
    }
    bool answer = !program_asked || program(t, false, program_data);
    if (!answer) {
        pthread_mutex_lock(&lock);
        s->stopped_at = t;
        pthread_mutex_unlock(&lock);
    }
    return answer;
}

/* After a graph computed in one piece: every node in order, asked and observed as the callback would have, up to
 * the node after which the program stopped the compute. */
static void capture_computed(struct scheduler * s, struct ggml_cgraph * graph) {
    int n = gg.graph_n_nodes(graph);
    unsplit_graph = graph;
    for (int i = 0; i < n && connection >= 0; i++) {
        struct ggml_tensor * t = gg.graph_node(graph, i);
        if (ask_about(s, t)) {
            observe(s, t);
        }
        if (t == s->stopped_at) {
            break;
        }
    }
    unsplit_graph = NULL;
    s->pending.node = NULL;
}

#endif

/* The program's callback runs outside our lock: it may call into ggml, and so into us. */
static bool eval_callback(struct ggml_tensor * t, bool ask, void * user_data) {
    struct scheduler * s = user_data;
    ggml_backend_sched_eval_callback program;
    void * program_data;
    if (ask) {
        pthread_mutex_lock(&lock);
        program = s->program;
        program_data = s->program_data;
        pthread_mutex_unlock(&lock);
        bool program_wants = program != NULL && program(t, true, program_data);
        pthread_mutex_lock(&lock);
        bool we_want = ask_about(s, t);
        s->pending.program = program_wants ? program : NULL;
        s->pending.program_data = program_data;
        pthread_mutex_unlock(&lock);
        return program_wants || we_want;
    }
    pthread_mutex_lock(&lock);
    bool asked = s->pending.node == t;
    if (asked) {
        observe(s, t);
    }
    program = asked ? s->pending.program : NULL;
    program_data = s->pending.program_data;
    s->pending.node = NULL;
    pthread_mutex_unlock(&lock);
    return program != NULL ? program(t, false, program_data) : true;
}

/* ---- activation ---- */

static bool check_ggml(char * reason, size_t size) {
    const size_t expected = sizeof(struct object_mirror) + sizeof(struct ggml_tensor);
    const char * absent = resolve_helpers();
    runtime_overhead = gg.tensor_overhead != NULL ? gg.tensor_overhead() : 0;
    if (gg.tensor_overhead != NULL && runtime_overhead != expected) {
        snprintf(reason, size, "ggml_tensor_overhead() is %zu there, the hook was built for %zu "
                 "(a ggml with another struct ggml_tensor)", runtime_overhead, expected);
    } else if (absent != NULL || real.set_eval_callback == NULL) {
        snprintf(reason, size, "%s not found", absent != NULL ? absent : "ggml_backend_sched_set_eval_callback");
    } else {
        return true;
    }
    return false;
}

static int open_socket(const char * path) {
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof address.sun_path) {
        return -1;
    }
    strcpy(address.sun_path, path);
    /* CLOEXEC: a program this one executes is preloaded too and connects on its own. */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (const struct sockaddr *) &address, sizeof address) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* <folder>/<pid>.frames, created (never reused: O_EXCL) readable by the user only.  A process image
 * that exec'ed from one which already wrote keeps its pid, so it takes <pid>-1.frames, and so on. */
static int open_stream_file(const char * folder) {
    char path[4096];
    int  fd = -1;
    if (mkdir(folder, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "ggml_inspector_hook: cannot create %s: %s; not capturing\n", folder, strerror(errno));
        return -1;
    }
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        int length = attempt == 0 ? snprintf(path, sizeof path, "%s/%ld.frames", folder, (long) getpid())
                                  : snprintf(path, sizeof path, "%s/%ld-%d.frames", folder, (long) getpid(), attempt);
        if (length < 0 || (size_t) length >= sizeof path) {
            errno = ENAMETOOLONG;
            break;
        }
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST) {
            break;
        }
    }
    if (fd < 0) {
        fprintf(stderr, "ggml_inspector_hook: cannot write in %s: %s; not capturing\n", folder, strerror(errno));
        return -1;
    }
    struct rlimit limit;
    file_written = 0;
    file_limit = getrlimit(RLIMIT_FSIZE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY ? limit.rlim_cur
                                                                                            : UINT64_MAX;
    return fd;
}

static void announce(void);

/* The output is the parent's socket (GGML_INSPECTOR_SOCKET, set by exec) or, with no parent, a file in
 * the dump folder (GGML_INSPECTOR_DIR); with neither, the hook stays off. */
static void open_output(void) {
    const char * socket_path = getenv("GGML_INSPECTOR_SOCKET");
    const char * folder = getenv("GGML_INSPECTOR_DIR");
    if (socket_path != NULL && *socket_path != '\0') {
        to_file = false;
        connection = open_socket(socket_path);
    } else if (folder != NULL && *folder != '\0') {
        to_file = true;
        connection = open_stream_file(folder);
    }
    announce();
}

/* On a new connection: checks ggml and the selection once per process image, then says HELLO (and why the hook
 * stays off, if it does). */
static void announce(void) {
    if (connection < 0) {
        return;
    }
    if (!checked) {
        checked = true;
        compatible = check_ggml(incompatibility, sizeof incompatibility);
        selectable = compatible && parse_selection(selection_error, sizeof selection_error) &&
                     parse_mode(selection_error, sizeof selection_error);
    }
    json_begin();
    field_number("pid", getpid());
    field_string("argv0", program_invocation_name);
    field_bool("compatible", compatible);
    field_string("reason", compatible ? "" : incompatibility);
    field_number("tensor_overhead", (long long) runtime_overhead);
    if (!send_head(HELLO, 0)) {
        return;
    }
    if (!compatible) {
        notice(true, incompatibility);
        disconnect();
    } else if (!selectable) {
        notice(false, selection_error);
        disconnect();
    }
}

static void before_fork(void) {
    pthread_mutex_lock(&lock);
}

static void after_fork_in_parent(void) {
    pthread_mutex_unlock(&lock);
}

/* A forked child shares the parent's socket or file, and two processes writing one stream would interleave
 * their frames: the child closes its copy and opens its own at its next scheduler call.  It keeps
 * the schedulers it inherited, numbers included; its BYE counts only its own computes. */
static void after_fork_in_child(void) {
    if (connection >= 0) {
        close(connection);
        connection = -1;
        attempted = false;
    }
    n_computes = 0;
    pthread_mutex_unlock(&lock);
}

/* Every entry point starts here: the first call of the process looks ggml up (it may have been
 * dlopen'ed just now) and opens the output (the parent's socket or a file in the dump folder). */
static void start(const void * caller) {
    pthread_mutex_lock(&lock);
    if (!resolved) {
        resolved = true;
        pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
    }
    if (real.set_eval_callback == NULL) { /* until found: an early caller may not see ggml (dlopen'ed locally) */
        resolve_real(caller);
    }
    if (!attempted) {
        attempted = true;
        open_output();
    }
    pthread_mutex_unlock(&lock);
}

/* BYE, then the connection closed: the stream ends as a process that ran to its end. */
static void goodbye(void) {
    if (connection >= 0) {
        json_begin();
        field_number("schedulers", n_schedulers);
        field_number("computes", n_computes);
        send_head(BYE, 0);
        disconnect();
    }
}

__attribute__((destructor)) static void say_goodbye(void) {
    pthread_mutex_lock(&lock);
    goodbye();
    pthread_mutex_unlock(&lock);
}

/* The program's own eval callback: remembered and chained in front of ours on a watched scheduler. */
static void set_program_callback(ggml_backend_sched_t sched, ggml_backend_sched_eval_callback callback,
                                 void * user_data) {
    pthread_mutex_lock(&lock);
    struct scheduler * s = watched(sched);
    if (s != NULL) {
        s->program = callback;
        s->program_data = user_data;
    }
    pthread_mutex_unlock(&lock);
    if (s == NULL) {
        real.set_eval_callback(sched, callback, user_data);
    }
}

#ifndef GGML_INSPECTOR_LINKED

/* ---- the interposed functions (preloaded only) ---- */

ggml_backend_sched_t ggml_backend_sched_new(ggml_backend_t * backends, ggml_backend_buffer_type_t * bufts,
                                            int n_backends, size_t graph_size, bool parallel, bool op_offload) {
    start(__builtin_return_address(0));
    if (real.new == NULL) {
        missing("ggml_backend_sched_new");
    }
    ggml_backend_sched_t sched = real.new(backends, bufts, n_backends, graph_size, parallel, op_offload);
    pthread_mutex_lock(&lock);
    struct scheduler * s = watched(sched);
    if (s != NULL) {
        s->seen_created = true;
    }
    Dl_info creator;
    if (s != NULL && dladdr(__builtin_return_address(0), &creator) && creator.dli_fname != NULL) {
        const char * slash = strrchr(creator.dli_fname, '/');
        snprintf(s->library, sizeof s->library, "%s", slash != NULL ? slash + 1 : creator.dli_fname);
    }
    pthread_mutex_unlock(&lock);
    return sched;
}

void ggml_backend_sched_free(ggml_backend_sched_t sched) {
    start(__builtin_return_address(0));
    if (real.free == NULL) {
        missing("ggml_backend_sched_free");
    }
    /* Forgotten first: once freed, another thread's new scheduler may get the same address. */
    pthread_mutex_lock(&lock);
    forget(sched);
    pthread_mutex_unlock(&lock);
    real.free(sched);
}

/* llama.cpp sets its callback (usually none) before every decode: we remember it and keep ours. */
void ggml_backend_sched_set_eval_callback(ggml_backend_sched_t sched, ggml_backend_sched_eval_callback callback,
                                          void * user_data) {
    start(__builtin_return_address(0));
    if (real.set_eval_callback == NULL) {
        missing("ggml_backend_sched_set_eval_callback");
    }
    set_program_callback(sched, callback, user_data);
}

/* Before the scheduler plans (reserving) or allocates `graph` on `sched`: the unsplit mode's flags, or why not. */
static void plan_for(ggml_backend_sched_t sched, struct ggml_cgraph * graph, bool reserving) {
    pthread_mutex_lock(&lock);
    struct scheduler * s = watched(sched);
    if (s != NULL) {
        plan_unsplit(s, graph, reserving);
    }
    pthread_mutex_unlock(&lock);
}

/* The scheduler plans its buffers here for the largest graph to come: the unsplit mode flags that graph's selected
 * tensors as outputs first, or records why it cannot. */
bool ggml_backend_sched_reserve(ggml_backend_sched_t sched, struct ggml_cgraph * measure_graph) {
    start(__builtin_return_address(0));
    if (real.reserve == NULL) {
        missing("ggml_backend_sched_reserve");
    }
    plan_for(sched, measure_graph, true);
    return real.reserve(sched, measure_graph);
}

bool ggml_backend_sched_alloc_graph(ggml_backend_sched_t sched, struct ggml_cgraph * graph) {
    start(__builtin_return_address(0));
    if (real.alloc_graph == NULL) {
        missing("ggml_backend_sched_alloc_graph");
    }
    plan_for(sched, graph, false);
    return real.alloc_graph(sched, graph);
}

/* graph_compute calls graph_compute_async, possibly through us again: only the outermost call of a
 * thread starts an evaluation, so one computation is one evaluation. */
static _Thread_local int compute_depth;

static enum ggml_status compute(__typeof__(ggml_backend_sched_graph_compute) * forward, ggml_backend_sched_t sched,
                                struct ggml_cgraph * graph) {
    struct scheduler * unsplit = NULL;
    if (compute_depth++ == 0) {
        pthread_mutex_lock(&lock);
        struct scheduler * s = watched(sched);
        if (s != NULL) {
            unsplit = computes_unsplit(s, graph) ? s : NULL;
            begin_evaluation(s, graph, unsplit != NULL);
        }
        if (unsplit != NULL) { /* computed in one piece: split only where the program asks or a tensor is held */
            unsplit->stopped_at = NULL;
            unsplit->program_asked = NULL;
            bool splits = unsplit->program != NULL || unsplit->n_held > 0;
            real.set_eval_callback(sched, splits ? unsplit_callback : NULL, unsplit);
        }
        pthread_mutex_unlock(&lock);
    }
    enum ggml_status status = forward(sched, graph);
    if (unsplit != NULL) {
        real.synchronize(sched);
        pthread_mutex_lock(&lock);
        if (status == GGML_STATUS_SUCCESS && watched(sched) == unsplit) {
            capture_computed(unsplit, graph);
        }
        pthread_mutex_unlock(&lock);
    }
    compute_depth--;
    return status;
}

enum ggml_status ggml_backend_sched_graph_compute(ggml_backend_sched_t sched, struct ggml_cgraph * graph) {
    start(__builtin_return_address(0));
    if (real.graph_compute == NULL) {
        missing("ggml_backend_sched_graph_compute");
    }
    return compute(real.graph_compute, sched, graph);
}

enum ggml_status ggml_backend_sched_graph_compute_async(ggml_backend_sched_t sched, struct ggml_cgraph * graph) {
    start(__builtin_return_address(0));
    if (real.graph_compute_async == NULL) {
        missing("ggml_backend_sched_graph_compute_async");
    }
    return compute(real.graph_compute_async, sched, graph);
}

#endif

/* ---- in-process use: ggml-inspector's own Python process, the hook preloaded into it ---- */

/* Starts capturing into `fd` (one end of a socket pair the calling process reads on another thread), with the
 * selection and mode of the GGML_INSPECTOR_* variables as set now.  `in_ggml` is any function of the process's
 * libggml-base (the caller, an interpreter, may not see ggml's symbols: llama-cpp-python loads it locally).  Call
 * it before the model's scheduler is created, so that the hook sees its plan.  Returns false, and does nothing,
 * when the hook already writes somewhere.  The descriptor becomes the hook's: disconnect closes it. */
bool ggml_inspector_connect(int fd, const void * in_ggml) {
    start(in_ggml);
    pthread_mutex_lock(&lock);
    bool connected = connection < 0 && fd >= 0;
    if (connected) {
        to_file = false;
        connection = fd;
        if (!lent_ready) {
            lent_ready = sem_init(&lent_copied, 0, 0) == 0;
        }
        while (lent_ready && sem_trywait(&lent_copied) == 0) { /* a copy acknowledged after the last run gave up */
        }
        announce();
        lending = lent_ready && connection >= 0;
    }
    pthread_mutex_unlock(&lock);
    return connected;
}

/* Stops capturing: says BYE and closes the connection; the program runs on unhooked. */
void ggml_inspector_disconnect(void) {
    pthread_mutex_lock(&lock);
    goodbye();
    pthread_mutex_unlock(&lock);
}

/* A scheduler this process created before it connected and has neither reserved nor allocated a graph on since
 * (mllama's, made by ggml-inspector itself): watched from now on, and planned for the unsplit mode as if the hook
 * had seen it created.  Its graphs must then be reserved, allocated and computed through the hook's own
 * ggml_backend_sched_* (the process calls libggml-base's directly otherwise).  False while the hook is off. */
bool ggml_inspector_adopt(ggml_backend_sched_t sched) {
    start(__builtin_return_address(0));
    pthread_mutex_lock(&lock);
    struct scheduler * s = watched(sched);
    if (s != NULL) {
        s->seen_created = true;
    }
    pthread_mutex_unlock(&lock);
    return s != NULL;
}

/* The reader has copied the bytes the last TENSOR frame lent (its lent_at, lent_bytes): the hook goes on. */
void ggml_inspector_lent_copied(void) {
    if (lent_ready) {
        sem_post(&lent_copied);
    }
}

/* How many frames the hook has written since the process started. */
unsigned long long ggml_inspector_frames_sent(void) {
    pthread_mutex_lock(&lock);
    unsigned long long sent = frames_sent;
    pthread_mutex_unlock(&lock);
    return sent;
}

/* ---- link-time use: the program calls these itself ---- */

/* Once, right after ggml_backend_sched_new: numbers the scheduler and installs the hook's callback. */
void ggml_inspector_attach(ggml_backend_sched_t sched) {
    start(__builtin_return_address(0));
    pthread_mutex_lock(&lock);
#ifdef GGML_INSPECTOR_LINKED
    /* ggml_backend_sched_free is not ours to see here: a scheduler we know at this address was freed. */
    forget(sched);
#endif
    watched(sched);
    pthread_mutex_unlock(&lock);
}

/* Before each ggml_backend_sched_graph_compute: starts an evaluation and (re)installs the hook's callback,
 * which a ggml_backend_sched_set_eval_callback since the last compute would have replaced. */
void ggml_inspector_begin(ggml_backend_sched_t sched) {
    start(__builtin_return_address(0));
    pthread_mutex_lock(&lock);
    struct scheduler * s = watched(sched);
    if (s != NULL) {
        snprintf(s->fallback, sizeof s->fallback, "linked into the program, the hook sees no plan or alloc");
        begin_evaluation(s, NULL, false);
    }
    pthread_mutex_unlock(&lock);
}

/* In place of ggml_backend_sched_set_eval_callback, same arguments, for a program with a callback of its
 * own: it is chained in front of the hook's and gets every call it asks for, its answers honoured. */
void ggml_inspector_set_eval_callback(ggml_backend_sched_t sched, ggml_backend_sched_eval_callback callback,
                                      void * user_data) {
    start(__builtin_return_address(0));
#ifndef GGML_INSPECTOR_LINKED
    if (real.set_eval_callback == NULL) {
        missing("ggml_backend_sched_set_eval_callback");
    }
#endif
    set_program_callback(sched, callback, user_data);
}
