pub struct InvalidInput;
