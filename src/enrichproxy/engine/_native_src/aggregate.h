/* One view's streaming aggregation: a port of enrichproxy.engine.aggregation that keeps its
 * state in arrays of structs instead of objects. Read that module for what the rules mean;
 * comments here explain only how the state is laid out.
 *
 * Inputs and groups are numbered (int32 ids into pools with free lists). The Python reference
 * iterates dicts in insertion order in three places where the order shows in a float sum or in
 * the exported state; the same orders are kept here: the view's inputs (order vector with
 * holes), each group's inputs (kept in order) and the view's groups (order vector with holes).
 */
#ifndef ENRICHPROXY_NATIVE_AGGREGATE_H
#define ENRICHPROXY_NATIVE_AGGREGATE_H

#include "common.h"

#define NO_ID (-1)
#define PENDING_MAX 32768 /* windows one input may have pending: more is refused as out of memory */

typedef struct {
    int64_t window;
    double contribution;
    uint8_t live;
} Pending;

enum {
    INPUT_COUNTER = 1,
    INPUT_LIVE = 2,
    INPUT_HAS_VALUE = 4,  /* last_value is not None */
    INPUT_CLOSED_LIVE = 8,
    INPUT_USED = 16,      /* the slot holds an input (not on the free list) */
    INPUT_FORGOTTEN = 32, /* forgotten by the sweep under way */
};

typedef struct {
    int64_t last_seen_ms;
    double last_value;
    double offset;
    double closed_contribution;
    /* (window, contribution, live) not yet emitted, windows ascending; read it through
     * input_pending(). One window (the usual case) is held inline, more on the heap. */
    union {
        Pending one;
        Pending *heap;
    } pending;
    int32_t group;
    int32_t predecessor;   /* an input id, or NO_ID */
    uint32_t predecessor_generation;
    uint32_t generation;   /* bumped when the slot is freed: a stale predecessor is ignored */
    int32_t entry;         /* the series table entry that maps to it; NO_ID when departed */
    uint32_t order_pos;    /* its place in View.order while it is in the view's input map */
    uint16_t count, capacity; /* pending windows (at most PENDING_MAX) */
    uint8_t flags;
} Input;

/* capacity 0 or 1: inline; more: on the heap. */
static inline Pending *input_pending(const Input *input) {
    return input->capacity > 1 ? input->pending.heap : (Pending *)&input->pending.one;
}

typedef struct {
    uint8_t *labels; /* encoded output labels */
    uint32_t labels_len;
    uint64_t hash;
    double retired;
    int32_t *inputs;
    size_t ninputs, inputs_cap;
    int32_t *departed;
    size_t ndeparted, departed_cap;
    uint32_t order_pos;
    uint8_t emitted_live;
    uint8_t used;
    uint8_t dirty; /* lost inputs in this sweep: compact ``inputs`` */
    /* In the flush numbered flush_epoch, the closing windows before number flush_done (an
     * index into View.windows) are summed for this group. */
    uint32_t flush_epoch, flush_done;
} Group;

typedef struct {
    int64_t window;
    int32_t *groups;
    size_t ngroups, groups_cap;
    uint64_t *bits; /* one bit per group id: already in ``groups`` */
    size_t bits_words;
} OpenWindow;

typedef struct {
    int32_t group;
    int64_t timestamp_ms;
    double value;
} OutputSample;

typedef struct {
    OutputSample *samples;
    size_t n, cap;
} Outputs;

typedef struct {
    int64_t interval_ms, lateness_ms, stale_after_ms, retention_ms, idle_flush_ms, sweep_ms;
    double *scratch; /* the parts of one group's sum */
    size_t scratch_cap;
    int32_t *forgotten; /* inputs forgotten by one sweep */
    size_t forgotten_cap;

    Input *inputs;
    size_t inputs_len, inputs_cap; /* slots used so far (some free) */
    int32_t free_input;            /* free list threaded through Input.group */
    size_t live_inputs;            /* inputs in the input map */

    int32_t *order; /* input ids in map insertion order, NO_ID for holes */
    size_t order_len, order_cap, order_holes;

    Group *groups;
    size_t groups_len, groups_cap;
    int32_t free_group;
    size_t ngroups;
    int32_t *group_order;
    size_t group_order_len, group_order_cap, group_order_holes;
    uint32_t *group_slots; /* open addressing over output labels: group id + 1, 0 empty */
    size_t group_slots_cap;

    OpenWindow *windows;
    size_t nwindows, windows_cap;

    int64_t closed_window, max_timestamp_ms;
    int64_t watermark_limit_ms; /* the watermark never passes it: the proxy's clock */
    int64_t watermark_seen_ms, watermark_moved_at_ms, swept_at_ms;
    int64_t late_samples, out_of_order_samples, forgotten_inputs, forgotten_groups;

    /* A flush under way (view_flush_begin .. view_flush_step): the windows it closes are the
     * first ``flush_closing`` of ``windows``; the cursor is a window and a group in it. */
    uint8_t flushing;
    size_t flush_closing, flush_window, flush_group;
    uint32_t flush_epoch;
    Outputs early; /* samples of groups summed ahead of the steps, for the next step */
} View;

/* The callback a view uses when an input leaves the input map (forgotten): the owner clears
 * its table entry's reference. */
typedef void (*ForgetInput)(void *owner, const View *view, int32_t entry);



View *view_new(int64_t interval_ms, int64_t lateness_ms, int64_t stale_after_ms,
               int64_t retention_ms, int64_t idle_flush_ms, int64_t sweep_ms);
void view_free(View *view);

int32_t view_find_group(const View *view, const uint8_t *labels, size_t len, uint64_t hash);
int view_admits(const View *view, const uint8_t *labels, size_t len, uint64_t hash,
                int64_t max_series);
/* attach: the input for ``existing`` (an input id of this entry, or NO_ID) in the group of
 * ``labels``. Returns the input id (new or the same), or -2 on memory failure. */
int32_t view_attach(View *view, int32_t existing, int32_t entry, const uint8_t *labels,
                    size_t len, uint64_t hash, int is_counter);

void view_observe(View *view, int32_t input, int64_t timestamp_ms, double value);
void view_end(View *view, int32_t input, int64_t timestamp_ms);
int view_flush(View *view, int64_t now_ms, int final, Outputs *out, void *owner,
               ForgetInput forget);
/* A flush in steps. Begin decides which windows close (and sweeps inputs): from then on a
 * sample for them is late, exactly as after the whole flush. Each step settles up to
 * ``budget`` inputs (0: all) and appends their samples; 1 when the flush is done, 0 when
 * more steps follow, -2 on memory failure. Samples may be observed and inputs attached
 * between two steps: a group they touch is summed first, for every window the flush closes
 * (view_flush_group_now), so that they count exactly as after the whole flush. */
int view_flush_begin(View *view, int64_t now_ms, int final, void *owner, ForgetInput forget);
int view_flush_step(View *view, size_t budget, Outputs *out);
/* During a flush in steps: sum ``group`` now for the windows the flush closes (samples kept
 * for the next step), before anything changes it. 0, or -2 on memory failure. */
int view_flush_group_now(View *view, int32_t group);
void view_mark_emitted_through(View *view, int64_t timestamp_ms);
double input_contribution(const Input *input);

/* For restoring saved state. */
int32_t view_new_group(View *view, const uint8_t *labels, size_t len, uint64_t hash);
int32_t view_new_input(View *view, int32_t group, int is_counter);
int view_map_input(View *view, int32_t group, int32_t input, int32_t entry);
int view_add_departed(View *view, int32_t group, int32_t input);
int view_touch(View *view, int64_t window, int32_t group);
int input_push_pending(View *view, int32_t input, int64_t window, double contribution, int live);
int32_t input_predecessor(const View *view, const Input *input);

#endif
