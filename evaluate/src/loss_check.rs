//! Training and evaluation judge the same function. The training minimises the model's own loss
//! ([`Trainable::per_token_loss`]: on CUDA a fused kernel that never makes the float32 logits); the evaluation
//! takes the cross-entropy of [`Model::logits`] in fixed code ([`evaluation::cross_entropy`]). A training file
//! that changes one and not the other (a softcap in the logits only, say) would train one model and be judged as
//! another, silently. At the hand-over, fixed code compares the two on a few training rows ([`check`]); where
//! they disagree the training is a crash that says so.

use anyhow::{bail, ensure, Result};
use autoresearch_harness::profile::Training;
use tch::{Kind, Tensor};

use crate::{evaluation, Trainable};

/// Training rows compared: a few hundred positions at `small`, thousands at `h100`; one forward pass each way.
pub const ROWS: usize = 2;
/// The largest difference allowed at any position, in nats. The two paths compute the same float32
/// cross-entropy of the same logits (measured on the CPU: under 1e-5); a softcap of 15 against none differs by
/// more than this wherever a logit exceeds about 2.
pub const TOLERANCE: f64 = 1e-3;

/// Compares the training's loss with the cross-entropy of the evaluated logits on `inputs` and `targets`
/// ((rows, cols) token ids): the largest difference, or an error naming the first position past [`TOLERANCE`].
pub fn check<M: Trainable>(model: &M, inputs: &Tensor, targets: &Tensor, vocab: usize) -> Result<f64> {
    tch::no_grad(|| {
        let device = model.device();
        let (x, y) = (inputs.to_device(device), targets.to_device(device));
        let trained = model.per_token_loss(&x, &y);
        ensure!(
            trained.size() == y.size(),
            "the training's per-token loss has shape {:?}; the targets have {:?}",
            trained.size(),
            y.size()
        );
        let evaluated = evaluation::cross_entropy(&model.logits(&x), &y, vocab)?;
        let (trained, evaluated) = (trained.to_kind(Kind::Double), evaluated.to_kind(Kind::Double));
        let difference = (&trained - &evaluated).abs().flatten(0, -1);
        let worst = difference.max().double_value(&[]);
        if worst <= TOLERANCE {
            return Ok(worst);
        }
        // The first position past the tolerance (NaN included: it compares as past).
        let past: Vec<f64> = Vec::try_from(difference.to_device(tch::Device::Cpu))?;
        let at = past.iter().position(|d| d.is_nan() || *d > TOLERANCE).unwrap_or(0);
        let cols = y.size()[1] as usize;
        let value = |t: &Tensor| t.flatten(0, -1).double_value(&[at as i64]);
        bail!(
            "the training's loss and the evaluated logits disagree: at row {} position {}, the training's loss \
             (`per_token_loss`) is {:.6} nats, the cross-entropy of `Model::logits` {:.6} (more than {TOLERANCE} \
             apart): the model would be trained with one function and evaluated with another (a softcap changed in \
             one place only, say)",
            at / cols,
            at % cols,
            value(&trained),
            value(&evaluated)
        )
    })
}

/// [`check`] on the first [`ROWS`] rows of the training data.
pub fn check_on_training_rows<M: Trainable>(model: &M, training: &Training) -> Result<f64> {
    let batch = training.train_loader(ROWS)?.next_batch()?;
    let shape = [batch.rows as i64, batch.cols as i64];
    let inputs = Tensor::from_slice(&batch.inputs).view(shape);
    let targets = Tensor::from_slice(&batch.targets).view(shape);
    check(model, &inputs, &targets, training.profile().vocab_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;
    use tch::{Device, Reduction};

    /// A bigram model whose logits are softcapped at `evaluated_cap` and whose training loss takes the raw
    /// logits through `autoresearch_ops::softcap_cross_entropy` at `trained_cap`.
    struct Capped {
        table: Tensor,
        evaluated_cap: f64,
        trained_cap: f64,
    }

    impl Capped {
        fn new(evaluated_cap: f64, trained_cap: f64) -> Capped {
            // Logits of a few units, as a trained model has: where a softcap of 15 matters.
            let table = crate::test_tables::fixed_table(16, 16, 8.0);
            Capped { table, evaluated_cap, trained_cap }
        }

        fn raw(&self, inputs: &Tensor) -> Tensor {
            Tensor::embedding(&self.table, inputs, -1, false, false)
        }
    }

    impl Model for Capped {
        fn logits(&self, inputs: &Tensor) -> Tensor {
            autoresearch_ops::softcap(&self.raw(inputs), self.evaluated_cap)
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
        fn state(&self) -> Vec<(String, Tensor)> {
            vec![("table".into(), self.table.shallow_clone())]
        }
        fn load_state(&self, _: &[(String, Tensor)]) -> Result<()> {
            Ok(())
        }
    }

    impl Trainable for Capped {
        fn per_token_loss(&self, inputs: &Tensor, targets: &Tensor) -> Tensor {
            let logits = self.raw(inputs).view([-1, 16]);
            autoresearch_ops::softcap_cross_entropy(&logits, &targets.view([-1]), self.trained_cap).view_as(targets)
        }
    }

    fn rows() -> (Tensor, Tensor) {
        let tokens = Tensor::randint(16, [2, 33], (Kind::Int64, Device::Cpu));
        (tokens.narrow(1, 0, 32).contiguous(), tokens.narrow(1, 1, 32).contiguous())
    }

    #[test]
    fn the_same_softcap_in_both_passes_and_a_softcap_in_one_place_only_is_named() {
        let (x, y) = rows();
        let worst = check(&Capped::new(15.0, 15.0), &x, &y, 16).unwrap();
        assert!(worst < 1e-5, "{worst}");
        for (evaluated, trained) in [(30.0, 15.0), (15.0, 1e9)] {
            let err = check(&Capped::new(evaluated, trained), &x, &y, 16).unwrap_err().to_string();
            assert!(err.starts_with("the training's loss and the evaluated logits disagree: at row "), "{err}");
            assert!(err.contains("a softcap changed in one place only"), "{err}");
        }
    }

    /// A loss that is not per token (a mean, say) is named, not compared by broadcasting.
    #[test]
    fn a_training_loss_of_another_shape_is_named() {
        struct Mean(Capped);
        impl Model for Mean {
            fn logits(&self, inputs: &Tensor) -> Tensor {
                self.0.logits(inputs)
            }
            fn device(&self) -> Device {
                Device::Cpu
            }
            fn state(&self) -> Vec<(String, Tensor)> {
                self.0.state()
            }
            fn load_state(&self, t: &[(String, Tensor)]) -> Result<()> {
                self.0.load_state(t)
            }
        }
        impl Trainable for Mean {
            fn per_token_loss(&self, inputs: &Tensor, targets: &Tensor) -> Tensor {
                let logits = self.0.logits(inputs).view([-1, 16]);
                logits.cross_entropy_loss(&targets.view([-1]), None::<Tensor>, Reduction::Mean, -1, 0.0)
            }
        }
        let (x, y) = rows();
        let err = check(&Mean(Capped::new(15.0, 15.0)), &x, &y, 16).unwrap_err().to_string();
        assert!(err.contains("per-token loss has shape []"), "{err}");
    }
}
