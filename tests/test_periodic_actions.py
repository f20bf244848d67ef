"""train.PeriodicActions: which of log, evaluate, checkpoint and stop are due after each step (no training)."""

from __future__ import annotations

from avtca_jax import config_validation, train


class Votes:
  """Stands for StopRequest: the vote is positive from step `stop_at` on."""

  def __init__(self, stop_at=None):
    self.stop_at, self.done = stop_at, 0

  def should_stop(self, step_metrics):
    self.done += 1
    return self.stop_at is not None and self.done >= self.stop_at


def due_steps(stop_at=None, start_step=0, has_eval=True, **overrides):
  config = config_validation.default_config("smoke")
  config.update_from_flattened_dict(dict(dict(log_every_steps=3, eval_every_epochs=2, checkpoint_every_steps=0),
                                          **overrides))
  votes = Votes(stop_at)
  votes.done = start_step
  periodic = train.PeriodicActions(config, steps_per_epoch=4, num_steps=10, start_step=start_step,
                                   has_eval=has_eval, stop=votes)
  out = {"log": [], "evaluate": [], "checkpoint": [], "stop": []}
  for done in range(start_step + 1, 11):
    due = periodic.after(done, {"stop": 0})
    for action in out:
      if getattr(due, action):
        out[action].append(done)
  return out


def test_checkpoint_at_epoch_ends_and_the_last_step_evaluate_every_second_epoch_log_with_both():
  assert due_steps() == {"checkpoint": [4, 8, 10], "evaluate": [8], "log": [1, 3, 4, 6, 8, 9, 10], "stop": []}


def test_checkpoint_every_n_steps_and_no_evaluation_without_a_validation_split():
  due = due_steps(checkpoint_every_steps=3, has_eval=False)
  assert due["checkpoint"] == [3, 6, 9, 10] and due["evaluate"] == []
  assert due["log"] == [1, 3, 6, 9, 10]


def test_a_stop_vote_is_a_log_step_and_a_resumed_run_logs_its_first_step():
  due = due_steps(stop_at=5)
  assert due["stop"][0] == 5 and 5 in due["log"]
  assert due_steps(start_step=6)["log"] == [7, 8, 9, 10]
