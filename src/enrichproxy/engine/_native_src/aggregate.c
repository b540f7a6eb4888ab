/* Port of enrichproxy.engine.aggregation; see aggregate.h for the layout. */
#include <stdlib.h>

#include "aggregate.h"

/* --- pools ----------------------------------------------------------------------------------- */

View *view_new(int64_t interval_ms, int64_t lateness_ms, int64_t stale_after_ms,
               int64_t retention_ms, int64_t idle_flush_ms, int64_t sweep_ms) {
    View *view = calloc(1, sizeof(View));
    if (view == NULL) return NULL;
    view->interval_ms = interval_ms;
    view->lateness_ms = lateness_ms;
    view->stale_after_ms = stale_after_ms;
    view->retention_ms = retention_ms;
    view->idle_flush_ms = idle_flush_ms;
    view->sweep_ms = sweep_ms;
    view->free_input = NO_ID;
    view->free_group = NO_ID;
    view->closed_window = EP_NEVER;
    view->max_timestamp_ms = EP_NEVER;
    view->watermark_limit_ms = INT64_MAX;
    view->watermark_seen_ms = EP_NEVER;
    view->watermark_moved_at_ms = 0;
    view->swept_at_ms = EP_NEVER;
    return view;
}

static void free_window(OpenWindow *window) {
    free(window->groups);
    free(window->bits);
}

void view_free(View *view) {
    if (view == NULL) return;
    for (size_t i = 0; i < view->inputs_len; i++)
        if (view->inputs[i].capacity > 1) free(view->inputs[i].pending.heap);
    for (size_t i = 0; i < view->groups_len; i++) {
        Group *group = &view->groups[i];
        free(group->labels);
        free(group->inputs);
        free(group->departed);
    }
    for (size_t i = 0; i < view->nwindows; i++) free_window(&view->windows[i]);
    free(view->inputs);
    free(view->order);
    free(view->groups);
    free(view->group_order);
    free(view->group_slots);
    free(view->windows);
    free(view->scratch);
    free(view->forgotten);
    free(view->early.samples);
    free(view);
}

int32_t view_new_input(View *view, int32_t group, int is_counter) {
    int32_t id;
    if (view->free_input != NO_ID) {
        id = view->free_input;
        view->free_input = view->inputs[id].group;
    } else {
        if (ep_grow((void **)&view->inputs, &view->inputs_cap, view->inputs_len + 1,
                    sizeof(Input)) < 0)
            return -2;
        id = (int32_t)view->inputs_len++;
        view->inputs[id].generation = 0;
    }
    Input *input = &view->inputs[id];
    uint32_t generation = input->generation;
    memset(input, 0, sizeof *input);
    input->generation = generation;
    input->last_seen_ms = EP_NEVER;
    input->group = group;
    input->predecessor = NO_ID;
    input->entry = NO_ID;
    input->flags = INPUT_USED | (is_counter ? INPUT_COUNTER : 0);
    return id;
}

static void free_input(View *view, int32_t id) {
    Input *input = &view->inputs[id];
    if (input->capacity > 1) free(input->pending.heap);
    input->pending.heap = NULL;
    input->count = input->capacity = 0;
    input->flags = 0;
    input->generation++;
    input->group = view->free_input;
    view->free_input = id;
}

/* --- the group table ------------------------------------------------------------------------- */

static int group_slots_grow(View *view) {
    size_t cap = view->group_slots_cap ? view->group_slots_cap * 2 : 64;
    uint32_t *slots = calloc(cap, sizeof(uint32_t));
    if (slots == NULL) return -1;
    for (size_t i = 0; i < view->group_slots_cap; i++) {
        uint32_t value = view->group_slots[i];
        if (!value) continue;
        size_t at = view->groups[value - 1].hash & (cap - 1);
        while (slots[at]) at = (at + 1) & (cap - 1);
        slots[at] = value;
    }
    free(view->group_slots);
    view->group_slots = slots;
    view->group_slots_cap = cap;
    return 0;
}

int32_t view_find_group(const View *view, const uint8_t *labels, size_t len, uint64_t hash) {
    if (!view->group_slots_cap) return NO_ID;
    size_t mask = view->group_slots_cap - 1;
    for (size_t at = hash & mask;; at = (at + 1) & mask) {
        uint32_t value = view->group_slots[at];
        if (!value) return NO_ID;
        const Group *group = &view->groups[value - 1];
        if (group->hash == hash && group->labels_len == len && memcmp(group->labels, labels, len) == 0)
            return (int32_t)(value - 1);
    }
}

static void group_slots_remove(View *view, int32_t id) {
    size_t mask = view->group_slots_cap - 1;
    size_t at = view->groups[id].hash & mask;
    while (view->group_slots[at] != (uint32_t)id + 1) at = (at + 1) & mask;
    /* Backward-shift deletion keeps every probe sequence unbroken without tombstones. */
    size_t hole = at;
    for (size_t next = (hole + 1) & mask; view->group_slots[next]; next = (next + 1) & mask) {
        size_t home = view->groups[view->group_slots[next] - 1].hash & mask;
        if (((next - home) & mask) >= ((next - hole) & mask)) {
            view->group_slots[hole] = view->group_slots[next];
            hole = next;
        }
    }
    view->group_slots[hole] = 0;
}

int32_t view_new_group(View *view, const uint8_t *labels, size_t len, uint64_t hash) {
    if ((view->ngroups + 1) * 2 > view->group_slots_cap && group_slots_grow(view) < 0) return -2;
    if (ep_grow((void **)&view->group_order, &view->group_order_cap, view->group_order_len + 1,
                sizeof(int32_t)) < 0)
        return -2;
    uint8_t *copy = malloc(len ? len : 1);
    if (copy == NULL) return -2;
    memcpy(copy, labels, len);
    int32_t id;
    if (view->free_group != NO_ID) {
        id = view->free_group;
        view->free_group = (int32_t)view->groups[id].order_pos;
    } else {
        if (ep_grow((void **)&view->groups, &view->groups_cap, view->groups_len + 1,
                    sizeof(Group)) < 0) {
            free(copy);
            return -2;
        }
        id = (int32_t)view->groups_len++;
    }
    Group *group = &view->groups[id];
    memset(group, 0, sizeof *group);
    group->labels = copy;
    group->labels_len = (uint32_t)len;
    group->hash = hash;
    group->used = 1;
    group->order_pos = (uint32_t)view->group_order_len;
    view->group_order[view->group_order_len++] = id;
    view->ngroups++;
    size_t mask = view->group_slots_cap - 1;
    size_t at = hash & mask;
    while (view->group_slots[at]) at = (at + 1) & mask;
    view->group_slots[at] = (uint32_t)id + 1;
    return id;
}

static void window_remove_group(OpenWindow *window, int32_t group) {
    size_t word = (size_t)group / 64;
    if (word >= window->bits_words || !(window->bits[word] & (UINT64_C(1) << (group % 64)))) return;
    window->bits[word] &= ~(UINT64_C(1) << (group % 64));
    for (size_t i = 0; i < window->ngroups; i++) {
        if (window->groups[i] == group) {
            memmove(window->groups + i, window->groups + i + 1,
                    (window->ngroups - i - 1) * sizeof(int32_t));
            window->ngroups--;
            break;
        }
    }
}

static void forget_group(View *view, int32_t id) {
    Group *group = &view->groups[id];
    group_slots_remove(view, id);
    /* The reference keeps a forgotten group in an open window, where it emits nothing (no
     * input, nothing emitted live); taking it out is the same and frees its id for reuse. */
    for (size_t i = 0; i < view->nwindows; i++) window_remove_group(&view->windows[i], id);
    view->group_order[group->order_pos] = NO_ID;
    view->group_order_holes++;
    free(group->labels);
    free(group->inputs);
    free(group->departed);
    memset(group, 0, sizeof *group);
    group->order_pos = (uint32_t)view->free_group;
    view->free_group = id;
    view->ngroups--;
}

int view_admits(const View *view, const uint8_t *labels, size_t len, uint64_t hash,
                int64_t max_series) {
    return !max_series || (int64_t)view->ngroups < max_series ||
           view_find_group(view, labels, len, hash) != NO_ID;
}

/* --- open windows ---------------------------------------------------------------------------- */

int view_touch(View *view, int64_t window_number, int32_t group) {
    OpenWindow *window = NULL;
    for (size_t i = view->nwindows; i-- > 0;) { /* the newest window is the usual one */
        if (view->windows[i].window == window_number) {
            window = &view->windows[i];
            break;
        }
    }
    if (window == NULL) {
        if (ep_grow((void **)&view->windows, &view->windows_cap, view->nwindows + 1,
                    sizeof(OpenWindow)) < 0)
            return -2;
        window = &view->windows[view->nwindows++];
        memset(window, 0, sizeof *window);
        window->window = window_number;
    }
    size_t word = (size_t)group / 64;
    if (word >= window->bits_words) {
        size_t words = window->bits_words ? window->bits_words : 1;
        while (words <= word) words *= 2;
        uint64_t *bits = realloc(window->bits, words * sizeof(uint64_t));
        if (bits == NULL) return -2;
        memset(bits + window->bits_words, 0, (words - window->bits_words) * sizeof(uint64_t));
        window->bits = bits;
        window->bits_words = words;
    }
    uint64_t bit = UINT64_C(1) << (group % 64);
    if (window->bits[word] & bit) return 0;
    if (ep_grow((void **)&window->groups, &window->groups_cap, window->ngroups + 1,
                sizeof(int32_t)) < 0)
        return -2;
    window->bits[word] |= bit;
    window->groups[window->ngroups++] = group;
    return 0;
}

/* --- the input map and group membership ------------------------------------------------------ */

static int group_append(int32_t **list, size_t *n, size_t *cap, int32_t id) {
    if (ep_grow((void **)list, cap, *n + 1, sizeof(int32_t)) < 0) return -2;
    (*list)[(*n)++] = id;
    return 0;
}

int view_map_input(View *view, int32_t group_id, int32_t input, int32_t entry) {
    Group *group = &view->groups[group_id];
    if (group_append(&group->inputs, &group->ninputs, &group->inputs_cap, input) < 0) return -2;
    if (ep_grow((void **)&view->order, &view->order_cap, view->order_len + 1, sizeof(int32_t)) < 0)
        return -2;
    view->inputs[input].order_pos = (uint32_t)view->order_len;
    view->inputs[input].entry = entry;
    view->order[view->order_len++] = input;
    view->live_inputs++;
    return 0;
}

int view_add_departed(View *view, int32_t group_id, int32_t input) {
    Group *group = &view->groups[group_id];
    return group_append(&group->departed, &group->ndeparted, &group->departed_cap, input);
}

/* Out of the view's input map (the reference's ``del self.inputs[key]``). */
static void unmap_order(View *view, Input *input) {
    view->order[input->order_pos] = NO_ID;
    view->order_holes++;
    input->entry = NO_ID;
    view->live_inputs--;
}

static void group_remove_input(Group *group, int32_t input) {
    for (size_t i = 0; i < group->ninputs; i++) {
        if (group->inputs[i] == input) {
            memmove(group->inputs + i, group->inputs + i + 1,
                    (group->ninputs - i - 1) * sizeof(int32_t));
            group->ninputs--;
            return;
        }
    }
}

static void compact_order(View *view) {
    if (view->order_holes * 2 <= view->order_len) return;
    size_t kept = 0;
    for (size_t i = 0; i < view->order_len; i++) {
        int32_t id = view->order[i];
        if (id == NO_ID) continue;
        view->inputs[id].order_pos = (uint32_t)kept;
        view->order[kept++] = id;
    }
    view->order_len = kept;
    view->order_holes = 0;
}

static void compact_group_order(View *view) {
    if (view->group_order_holes * 2 <= view->group_order_len) return;
    size_t kept = 0;
    for (size_t i = 0; i < view->group_order_len; i++) {
        int32_t id = view->group_order[i];
        if (id == NO_ID) continue;
        view->groups[id].order_pos = (uint32_t)kept;
        view->group_order[kept++] = id;
    }
    view->group_order_len = kept;
    view->group_order_holes = 0;
}

/* --- one input's state ----------------------------------------------------------------------- */

double input_contribution(const Input *input) {
    if (!(input->flags & INPUT_HAS_VALUE)) return 0.0;
    if (input->flags & INPUT_COUNTER) return input->offset + input->last_value;
    return (input->flags & INPUT_LIVE) ? input->last_value : 0.0;
}

int input_push_pending(View *view, int32_t id, int64_t window, double contribution, int live) {
    Input *input = &view->inputs[id];
    if (input->count == input->capacity) {
        if (input->capacity == 0) {
            input->capacity = 1;
        } else {
            if (input->capacity >= PENDING_MAX) return -2;
            uint32_t capacity = input->capacity * 2;
            Pending *grown;
            if (input->capacity == 1) {
                grown = malloc(capacity * sizeof(Pending));
                if (grown == NULL) return -2;
                grown[0] = input->pending.one;
            } else {
                grown = realloc(input->pending.heap, capacity * sizeof(Pending));
                if (grown == NULL) return -2;
            }
            input->pending.heap = grown;
            input->capacity = (uint16_t)capacity;
        }
    }
    Pending *entry = &input_pending(input)[input->count++];
    entry->window = window;
    entry->contribution = contribution;
    entry->live = (uint8_t)(live != 0);
    return 0;
}

/* The reference's InputSeries._record. */
static int record(View *view, int32_t id, int64_t window, double contribution, int live) {
    Input *input = &view->inputs[id];
    while (input->count && input_pending(input)[input->count - 1].window > window) input->count--;
    if (input->count && input_pending(input)[input->count - 1].window == window) {
        Pending *last = &input_pending(input)[input->count - 1];
        last->contribution = contribution;
        last->live = (uint8_t)(live != 0);
        return 0;
    }
    int32_t group = input->group;
    if (input_push_pending(view, id, window, contribution, live) < 0) return -2;
    return view_touch(view, window, group);
}

int32_t input_predecessor(const View *view, const Input *input) {
    int32_t id = input->predecessor;
    if (id == NO_ID) return NO_ID;
    const Input *predecessor = &view->inputs[id];
    if (!(predecessor->flags & INPUT_USED) || predecessor->generation != input->predecessor_generation)
        return NO_ID; /* finished in its old group and freed: nothing left to hand over */
    return id;
}

static void hand_over(View *view, int32_t id, int64_t window) {
    int32_t predecessor = input_predecessor(view, &view->inputs[id]);
    view->inputs[id].predecessor = NO_ID;
    if (predecessor == NO_ID) return;
    Input *old = &view->inputs[predecessor];
    if (old->count && window < input_pending(old)[old->count - 1].window)
        record(view, predecessor, window, input_contribution(old), 0);
}

/* What observe and end share: 0 when the sample is out of order or a late repeat (counted);
 * else 1 with its window, or ADMITTED_LATE for a late sample newer than the input's last one,
 * admitted as of the first window not emitted yet (and counted as late), as in the reference.
 * An admitted sample moves the input's time and the watermark and ends a move. */
#define ADMITTED_LATE 2
static inline int admit(View *view, int32_t id, int64_t timestamp_ms, int64_t *window_out) {
    if (view->flushing) {
        /* As after the whole flush: the groups this sample can change are summed first. */
        view_flush_group_now(view, view->inputs[id].group);
        int32_t predecessor = input_predecessor(view, &view->inputs[id]);
        if (predecessor != NO_ID) view_flush_group_now(view, view->inputs[predecessor].group);
    }
    int64_t window = (int64_t)ep_ceildiv(timestamp_ms, view->interval_ms);
    Input *input = &view->inputs[id];
    int admitted = 1;
    if (window <= view->closed_window) {
        view->late_samples++;
        if (timestamp_ms <= input->last_seen_ms) return 0;
        window = view->closed_window + 1;
        admitted = ADMITTED_LATE;
    } else if (timestamp_ms <= input->last_seen_ms) {
        view->out_of_order_samples++;
        return 0;
    }
    input->last_seen_ms = timestamp_ms;
    if (timestamp_ms > view->max_timestamp_ms) {
        /* The reference's max(watermark, min(time, limit)). */
        int64_t capped = timestamp_ms < view->watermark_limit_ms ? timestamp_ms
                                                                  : view->watermark_limit_ms;
        if (capped > view->max_timestamp_ms) view->max_timestamp_ms = capped;
    }
    if (input->predecessor != NO_ID) hand_over(view, id, window);
    *window_out = window;
    return admitted;
}

void view_observe(View *view, int32_t id, int64_t timestamp_ms, double value) {
    int64_t window;
    int admitted = admit(view, id, timestamp_ms, &window);
    if (!admitted) return;
    Input *input = &view->inputs[id];
    double contribution;
    if (input->flags & INPUT_COUNTER) {
        if ((input->flags & INPUT_HAS_VALUE) && value < input->last_value)
            input->offset += input->last_value; /* a reset: what was counted stays counted */
        contribution = input->offset + value;
    } else {
        contribution = value;
    }
    input->last_value = value;
    input->flags |= INPUT_HAS_VALUE | INPUT_LIVE;
    if (admitted == ADMITTED_LATE && !input->count) {
        /* settled at once: it shows in the next window its group writes, and makes none */
        input->closed_contribution = contribution;
        input->flags |= INPUT_CLOSED_LIVE;
        return;
    }
    if (input->count) {
        Pending *last = &input_pending(input)[input->count - 1];
        if (last->window == window) {
            last->contribution = contribution;
            last->live = 1;
            return;
        }
        if (last->window > window) {
            record(view, id, window, contribution, 1);
            return;
        }
    }
    int32_t group = input->group;
    if (input_push_pending(view, id, window, contribution, 1) == 0) view_touch(view, window, group);
}

void view_end(View *view, int32_t id, int64_t timestamp_ms) {
    int64_t window;
    if (!admit(view, id, timestamp_ms, &window)) return;
    Input *input = &view->inputs[id];
    input->flags &= (uint8_t)~INPUT_LIVE;
    record(view, id, window, input_contribution(input), 0);
}

/* --- attach and move ------------------------------------------------------------------------- */

static int move_input(View *view, int32_t moved_id, int32_t series_id) {
    Input *moved = &view->inputs[moved_id];
    int32_t old_group = moved->group;
    group_remove_input(&view->groups[old_group], moved_id);
    unmap_order(view, moved);
    Input *series = &view->inputs[series_id];
    if (moved->flags & INPUT_HAS_VALUE) {
        series->last_value = moved->last_value;
        series->flags |= INPUT_HAS_VALUE;
        series->last_seen_ms = moved->last_seen_ms;
        series->offset = (series->flags & INPUT_COUNTER) ? -moved->last_value : 0.0;
    }
    if (moved->flags & INPUT_LIVE) {
        i128 after_closed = (i128)view->closed_window + 1;
        i128 after_watermark = ep_ceildiv(view->max_timestamp_ms, view->interval_ms) + 1;
        int64_t window = (int64_t)(after_closed > after_watermark ? after_closed : after_watermark);
        moved->flags &= (uint8_t)~INPUT_LIVE;
        if (record(view, moved_id, window, input_contribution(moved), 0) < 0) return -2;
        series = &view->inputs[series_id];
        series->flags |= INPUT_LIVE;
        if (record(view, series_id, window, input_contribution(series), 1) < 0) return -2;
        series = &view->inputs[series_id];
        series->predecessor = moved_id;
        series->predecessor_generation = view->inputs[moved_id].generation;
    }
    moved = &view->inputs[moved_id];
    if (moved->count) return view_add_departed(view, old_group, moved_id);
    if (moved->flags & INPUT_COUNTER) view->groups[old_group].retired += input_contribution(moved);
    free_input(view, moved_id);
    return 0;
}

int32_t view_attach(View *view, int32_t existing, int32_t entry, const uint8_t *labels,
                    size_t len, uint64_t hash, int is_counter) {
    if (existing != NO_ID && view->flushing)
        view_flush_group_now(view, view->inputs[existing].group); /* see admit */
    if (existing != NO_ID) {
        Input *input = &view->inputs[existing];
        const Group *group = &view->groups[input->group];
        if (group->labels_len == len && memcmp(group->labels, labels, len) == 0) {
            if (is_counter)
                input->flags |= INPUT_COUNTER;
            else
                input->flags &= (uint8_t)~INPUT_COUNTER;
            return existing;
        }
    }
    int32_t group = view_find_group(view, labels, len, hash);
    if (group == NO_ID) group = view_new_group(view, labels, len, hash);
    if (group < 0) return -2;
    if (view->flushing && view_flush_group_now(view, group) < 0) return -2;
    int32_t series = view_new_input(view, group, is_counter);
    if (series < 0) return -2;
    if (existing != NO_ID && move_input(view, existing, series) < 0) return -2;
    if (view_map_input(view, group, series, entry) < 0) return -2;
    return series;
}

/* --- flush ----------------------------------------------------------------------------------- */

static void settle(Input *input, int64_t window) {
    uint32_t settled = 0;
    while (settled < input->count && input_pending(input)[settled].window <= window) {
        input->closed_contribution = input_pending(input)[settled].contribution;
        if (input_pending(input)[settled].live)
            input->flags |= INPUT_CLOSED_LIVE;
        else
            input->flags &= (uint8_t)~INPUT_CLOSED_LIVE;
        settled++;
    }
    if (settled) {
        input->count -= settled;
        memmove(input_pending(input), input_pending(input) + settled, input->count * sizeof(Pending));
    }
}

static double closed_value(const Input *input) {
    if ((input->flags & INPUT_COUNTER) || (input->flags & INPUT_CLOSED_LIVE))
        return input->closed_contribution;
    return 0.0;
}

static int value_at(View *view, int32_t group_id, int64_t window, double *value, int *live) {
    Group *group = &view->groups[group_id];
    size_t need = 1 + group->ninputs + group->ndeparted;
    if (ep_grow((void **)&view->scratch, &view->scratch_cap, need, sizeof(double)) < 0) return -2;
    double *parts = view->scratch;
    size_t n = 0;
    parts[n++] = group->retired;
    int any_live = 0;
    for (size_t i = 0; i < group->ninputs; i++) {
        Input *input = &view->inputs[group->inputs[i]];
        settle(input, window);
        parts[n++] = closed_value(input);
        any_live |= (input->flags & INPUT_CLOSED_LIVE) != 0;
    }
    if (group->ndeparted) {
        for (size_t i = 0; i < group->ndeparted; i++) {
            Input *input = &view->inputs[group->departed[i]];
            settle(input, window);
            parts[n++] = closed_value(input);
            any_live |= (input->flags & INPUT_CLOSED_LIVE) != 0;
        }
        /* Once its last window here is settled, a departed input is only its total. */
        size_t kept = 0;
        for (size_t i = 0; i < group->ndeparted; i++) {
            int32_t id = group->departed[i];
            Input *input = &view->inputs[id];
            if (input->count) {
                group->departed[kept++] = id;
            } else {
                if (input->flags & INPUT_COUNTER) group->retired += input->closed_contribution;
                free_input(view, id);
            }
        }
        group->ndeparted = kept;
    }
    *value = ep_exact_sum(parts, n);
    *live = any_live;
    return 0;
}

static int expire_inputs(View *view, void *owner, ForgetInput forget) {
    i128 stale_before = (i128)view->max_timestamp_ms - view->stale_after_ms;
    i128 forget_before = (i128)view->max_timestamp_ms - view->retention_ms;
    size_t nforgotten = 0;
    size_t end = view->order_len;
    for (size_t pos = 0; pos < end; pos++) {
        int32_t id = view->order[pos];
        if (id == NO_ID) continue;
        Input *input = &view->inputs[id];
        if ((input->flags & INPUT_LIVE) && input->last_seen_ms < stale_before) {
            input->flags &= (uint8_t)~INPUT_LIVE;
            i128 window = ep_ceildiv((i128)input->last_seen_ms + view->stale_after_ms,
                                     view->interval_ms);
            i128 floor = (i128)view->closed_window + 1;
            if (record(view, id, (int64_t)(window > floor ? window : floor),
                       input_contribution(input), 0) < 0)
                return -2;
        } else if (!(input->flags & INPUT_LIVE) && !input->count &&
                   input->last_seen_ms < forget_before) {
            Group *group = &view->groups[input->group];
            if (input->flags & INPUT_COUNTER) group->retired += input_contribution(input);
            group->dirty = 1;
            int32_t entry = input->entry;
            unmap_order(view, input);
            input->flags |= INPUT_FORGOTTEN;
            if (forget != NULL) forget(owner, view, entry);
            view->forgotten_inputs++;
            if (ep_grow((void **)&view->forgotten, &view->forgotten_cap, nforgotten + 1,
                        sizeof(int32_t)) < 0)
                return -2;
            view->forgotten[nforgotten++] = id;
        }
    }
    if (nforgotten) {
        for (size_t i = 0; i < nforgotten; i++) {
            Group *group = &view->groups[view->inputs[view->forgotten[i]].group];
            if (!group->dirty) continue;
            size_t kept = 0;
            for (size_t j = 0; j < group->ninputs; j++) {
                int32_t member = group->inputs[j];
                if (!(view->inputs[member].flags & INPUT_FORGOTTEN)) group->inputs[kept++] = member;
            }
            group->ninputs = kept;
            group->dirty = 0;
        }
        for (size_t i = 0; i < nforgotten; i++) free_input(view, view->forgotten[i]);
    }
    compact_order(view);
    return 0;
}

static void forget_groups(View *view) {
    size_t end = view->group_order_len;
    for (size_t pos = 0; pos < end; pos++) {
        int32_t id = view->group_order[pos];
        if (id == NO_ID) continue;
        Group *group = &view->groups[id];
        if (!group->ninputs && !group->ndeparted && !group->emitted_live) {
            forget_group(view, id);
            view->forgotten_groups++;
        }
    }
    compact_group_order(view);
}

static int compare_windows(const void *a, const void *b) {
    int64_t x = ((const OpenWindow *)a)->window, y = ((const OpenWindow *)b)->window;
    return (x > y) - (x < y);
}

/* The reference's _awaited_through: the last window that every live input with a sample
 * within idle_flush (sample time) before the watermark has passed. */
static i128 awaited_through(const View *view) {
    i128 awaited_since = (i128)view->max_timestamp_ms - view->idle_flush_ms;
    int64_t lowest = INT64_MAX;
    for (size_t pos = 0; pos < view->order_len; pos++) {
        int32_t id = view->order[pos];
        if (id == NO_ID) continue;
        const Input *input = &view->inputs[id];
        int64_t last_seen_ms = input->last_seen_ms;
        if ((input->flags & INPUT_LIVE) && (i128)last_seen_ms >= awaited_since &&
            last_seen_ms < lowest)
            lowest = last_seen_ms;
    }
    return ep_floordiv(lowest, view->interval_ms);
}

int view_flush_begin(View *view, int64_t now_ms, int final, void *owner, ForgetInput forget) {
    if (view->max_timestamp_ms != view->watermark_seen_ms) {
        view->watermark_seen_ms = view->max_timestamp_ms;
        view->watermark_moved_at_ms = now_ms;
    }
    if (final || (i128)now_ms - view->swept_at_ms >= view->sweep_ms) {
        view->swept_at_ms = now_ms;
        if (expire_inputs(view, owner, forget) < 0) return -2;
        forget_groups(view);
    }
    int idle = (i128)now_ms - view->watermark_moved_at_ms >= view->idle_flush_ms;
    i128 close_through;
    if (final || idle) {
        /* max(open windows, default=closed_window), as the reference writes it */
        close_through = view->closed_window;
        for (size_t i = 0; i < view->nwindows; i++)
            if (i == 0 || view->windows[i].window > close_through)
                close_through = view->windows[i].window;
    } else {
        close_through = ep_floordiv((i128)view->max_timestamp_ms - view->lateness_ms,
                                    view->interval_ms);
        if (close_through > view->closed_window && view->nwindows) {
            i128 awaited = awaited_through(view);
            if (awaited < close_through) close_through = awaited;
        }
    }
    if (view->nwindows > 1)
        qsort(view->windows, view->nwindows, sizeof(OpenWindow), compare_windows);
    size_t closing = 0;
    while (closing < view->nwindows && view->windows[closing].window <= close_through) closing++;
    /* Windows opened from here on come after these: samples for these are late now. */
    if (close_through > view->closed_window) view->closed_window = (int64_t)close_through;
    view->flushing = 1;
    if (++view->flush_epoch == 0) view->flush_epoch = 1; /* 0: a group never summed */
    view->flush_closing = closing;
    view->flush_window = 0;
    view->flush_group = 0;
    return 0;
}

/* The sample of ``group`` for closing window number ``index``, if it writes one. */
static int emit(View *view, int32_t group, size_t index, Outputs *out) {
    const OpenWindow *window = &view->windows[index];
    double value;
    int live;
    if (value_at(view, group, window->window, &value, &live) < 0) return -2;
    Group *state = &view->groups[group];
    state->flush_epoch = view->flush_epoch;
    state->flush_done = (uint32_t)index + 1;
    if (!live && !state->emitted_live) return 0;
    if (ep_grow((void **)&out->samples, &out->cap, out->n + 1, sizeof(OutputSample)) < 0)
        return -2;
    OutputSample *sample = &out->samples[out->n++];
    sample->group = group;
    sample->timestamp_ms = (int64_t)((i128)window->window * view->interval_ms);
    sample->value = live ? value : ep_stale_nan();
    state->emitted_live = (uint8_t)live;
    return 0;
}

/* Closing windows before this number are summed for ``group`` already. */
static size_t done_through(const View *view, const Group *group) {
    return group->flush_epoch == view->flush_epoch ? group->flush_done : 0;
}

int view_flush_group_now(View *view, int32_t group) {
    if (!view->flushing || group < 0) return 0;
    size_t first = done_through(view, &view->groups[group]);
    if (first < view->flush_window) first = view->flush_window;
    size_t word = (size_t)group / 64;
    uint64_t bit = UINT64_C(1) << (group % 64);
    for (size_t index = first; index < view->flush_closing; index++) {
        const OpenWindow *window = &view->windows[index];
        if (word >= window->bits_words || !(window->bits[word] & bit)) continue;
        if (emit(view, group, index, &view->early) < 0) return -2;
    }
    Group *state = &view->groups[group];
    state->flush_epoch = view->flush_epoch;
    state->flush_done = (uint32_t)view->flush_closing;
    return 0;
}

int view_flush_step(View *view, size_t budget, Outputs *out) {
    if (view->early.n) {
        if (ep_grow((void **)&out->samples, &out->cap, out->n + view->early.n,
                    sizeof(OutputSample)) < 0)
            return -2;
        memcpy(out->samples + out->n, view->early.samples, view->early.n * sizeof(OutputSample));
        out->n += view->early.n;
        view->early.n = 0;
    }
    size_t work = 0;
    while (view->flush_window < view->flush_closing) {
        /* Re-read every step: windows opened between steps may have moved the array. */
        const OpenWindow *window = &view->windows[view->flush_window];
        while (view->flush_group < window->ngroups) {
            if (budget && work >= budget) return 0;
            int32_t group = window->groups[view->flush_group++];
            const Group *state = &view->groups[group];
            if (done_through(view, state) > view->flush_window) continue; /* summed early */
            work += 1 + state->ninputs + state->ndeparted;
            if (emit(view, group, view->flush_window, out) < 0) return -2;
            window = &view->windows[view->flush_window];
        }
        view->flush_window++;
        view->flush_group = 0;
    }
    size_t closed = view->flush_closing;
    for (size_t i = 0; i < closed; i++) free_window(&view->windows[i]);
    if (closed) {
        memmove(view->windows, view->windows + closed,
                (view->nwindows - closed) * sizeof(OpenWindow));
        view->nwindows -= closed;
    }
    view->flushing = 0;
    view->flush_closing = view->flush_window = view->flush_group = 0;
    return 1;
}

int view_flush(View *view, int64_t now_ms, int final, Outputs *out, void *owner,
               ForgetInput forget) {
    if (view_flush_begin(view, now_ms, final, owner, forget) < 0) return -2;
    return view_flush_step(view, 0, out) < 0 ? -2 : 0;
}

void view_mark_emitted_through(View *view, int64_t timestamp_ms) {
    i128 window = ep_floordiv(timestamp_ms, view->interval_ms);
    if (window <= view->closed_window) return;
    view->closed_window = (int64_t)window;
    size_t kept = 0;
    for (size_t i = 0; i < view->nwindows; i++) {
        if (view->windows[i].window <= window)
            free_window(&view->windows[i]);
        else
            view->windows[kept++] = view->windows[i];
    }
    view->nwindows = kept;
}
