"""The pose network: tf.data pipeline, multi-task Keras model, the thesis losses, training and evaluation."""
