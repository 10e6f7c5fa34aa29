# The tutorial's recipe (../shared/seed/000_f0ceb365e0bdf24a.txt, "8-2 합성곱 신경망을 사용한 이미지
# 분류"), its code cells in order with the typos fixed and nothing else changed. It is the
# baseline of `make bench`; keep it as the tutorial wrote it (batch 32, NumPy arrays, .h5).
# Typos fixed: train_sclaed -> train_scaled, input_size= -> input_shape=,
# Dropout(0,4) -> Dropout(0.4), patiece= -> patience=, and metrics='accuracy' ->
# metrics=['accuracy'] (Keras 3 refuses a bare string; tf.keras 2, the tutorial's, took it).
# Offline, keras.datasets reads the IDX files from $KERAS_HOME/datasets/fashion-mnist
# (the benchmark links the Debian dataset there).
from tensorflow import keras
from sklearn.model_selection import train_test_split

(train_input, train_target), (test_input, test_target) = keras.datasets.fashion_mnist.load_data()

train_scaled = train_input.reshape(-1, 28, 28, 1) / 255.0
train_scaled, val_scaled, train_target, val_target = train_test_split(train_scaled, train_target, test_size=0.2, random_state=42)

model = keras.Sequential()

model.add(keras.layers.Conv2D(32, kernel_size=3, activation='relu', padding='same', input_shape=(28, 28, 1)))

model.add(keras.layers.MaxPooling2D(2))

model.add(keras.layers.Conv2D(64, kernel_size=3, activation='relu', padding='same'))

model.add(keras.layers.MaxPooling2D(2))

model.add(keras.layers.Flatten())
model.add(keras.layers.Dense(100, activation='relu'))
model.add(keras.layers.Dropout(0.4))
model.add(keras.layers.Dense(10, activation='softmax'))

model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])

checkpoint_cb = keras.callbacks.ModelCheckpoint('best-cnn-model.h5', save_best_only=True)

early_stopping_cb = keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True)

history = model.fit(train_scaled, train_target, epochs=20, validation_data=(val_scaled, val_target), callbacks=[checkpoint_cb, early_stopping_cb])

preds = model.predict(val_scaled[0:1])
print(preds)
