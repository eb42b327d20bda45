-- The app's directory inside its repository (monorepos), and whether its tests may use the network.
ALTER TABLE apps ADD COLUMN app_root text NOT NULL DEFAULT '.';
ALTER TABLE apps ADD COLUMN test_network boolean NOT NULL DEFAULT false;
