/* The status of a view's job, as one line (the *.status xattrs, the control
 * file) and as JSON members (user.vdiskfs.jobs, the info JSON): what it is,
 * its phase, the data copied of the data to copy (holes are not work), the
 * measured rate and what it makes the time left. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "mirror/mirror-int.h"

struct job_snap {
	enum job_type type;
	enum mirror_phase phase;
	const char *target, *format;
	uint64_t copied, total, dirty, speed, rate;
	int64_t eta; /* seconds, -1: unknown */
	unsigned percent;
	bool paused;
	char error[256];
};

/* Called with m->lock held; strings stay valid while it is. want: the type
 * asked for, or -1 for whichever job the view has. */
static void job_snap(struct mirror *m, int want, struct job_snap *s)
{
	struct mirror_job *job = atomic_load(&m->job);

	memset(s, 0, sizeof(*s));
	s->eta = -1;
	if (job && (want < 0 || job->type == (enum job_type)want)) {
		bool counted = atomic_load(&job->counted);

		s->type = job->type;
		s->phase = job->phase;
		s->target = job->target;
		s->format = job->dst ? job->dst->fmt->name : "";
		s->copied = atomic_load(&job->copied);
		s->total = atomic_load(&job->work);
		if (s->total < s->copied)
			s->total = s->copied;
		s->dirty = s->total - s->copied + job->guest_bytes +
			   atomic_load(&job->ndirty) * job->dirty_gran;
		s->speed = atomic_load(&job->speed);
		s->rate = atomic_load(&job->rate);
		s->paused = job->paused;
		if (job->phase == MP_READY)
			s->percent = 100;
		else if (counted)
			s->percent = s->total ? (unsigned)(s->copied * 100 / s->total) : 100;
		if (job->phase == MP_READY || (counted && s->copied == s->total))
			s->eta = 0;
		else if (counted && s->rate && !job->paused)
			s->eta = (int64_t)((s->total - s->copied + s->rate - 1) / s->rate);
		snprintf(s->error, sizeof(s->error), "%s", job->error);
	} else if (m->last_phase == MP_COMPLETED &&
		   (want < 0 || m->last_type == (enum job_type)want)) {
		s->type = m->last_type;
		s->phase = MP_COMPLETED;
		s->target = m->last_target;
		s->format = m->last_format;
		s->copied = s->total = m->last_total;
		s->percent = 100;
		s->eta = 0;
	}
}

void job_status_line(struct mirror *m, enum job_type type, GString *out)
{
	struct job_snap s;

	pthread_mutex_lock(&m->lock);
	job_snap(m, type, &s);
	if (s.phase == MP_NONE)
		g_string_append(out, "phase=none");
	else
		g_string_append_printf(
			out,
			"phase=%s target=%s format=%s copied=%" PRIu64 " total=%" PRIu64
			" percent=%u rate=%" PRIu64 " eta=%" PRId64 " dirty=%" PRIu64
			" speed=%" PRIu64 " paused=%d type=%s error=%s",
			job_phase_name(s.phase), s.target, s.format, s.copied, s.total, s.percent,
			s.rate, s.eta, s.dirty, s.speed, s.paused, job_type_name(s.type), s.error);
	pthread_mutex_unlock(&m->lock);
}

static void snap_json(const struct job_snap *s, struct json_writer *j)
{
	json_str(j, "phase", job_phase_name(s->phase));
	if (s->phase == MP_NONE)
		return;
	json_str(j, "type", job_type_name(s->type));
	json_str(j, "target", s->target);
	json_str(j, "format", s->format);
	job_progress_json(j, s->copied, s->total, s->percent, s->rate, s->eta);
	json_u64(j, "dirty", s->dirty);
	json_u64(j, "speed", s->speed);
	json_bool(j, "paused", s->paused);
	json_str(j, "error", s->error[0] ? s->error : NULL);
}

void job_status_json(struct mirror *m, enum job_type type, struct json_writer *j)
{
	struct job_snap s;

	pthread_mutex_lock(&m->lock);
	job_snap(m, type, &s);
	snap_json(&s, j);
	pthread_mutex_unlock(&m->lock);
}

bool job_any_json(struct mirror *m, struct json_writer *j)
{
	struct job_snap s;

	pthread_mutex_lock(&m->lock);
	job_snap(m, -1, &s);
	if (s.phase != MP_NONE) {
		json_begin_object(j, NULL);
		snap_json(&s, j);
		json_end_object(j);
	}
	pthread_mutex_unlock(&m->lock);
	return s.phase != MP_NONE;
}
